"""What other tools read: one run in full (`harness show`), the plain `lm_eval` command lines that reproduce a run's
stored scores, the database as Parquet files, and lm-eval's own results JSON per run.

The lm_eval command is the harness's evaluation spelled as CLI flags: the same weights (a LoRA adapter through
`peft=`, which lm-eval applies unmerged), float32 master weights under bf16 autocast (`mixed_precision_dtype`, what
the harness does on a CPU or GPU with bf16), the same attention kernel, context length, batch size, example limit and
seeds, the chat template on learn tasks only, and the task folder (`--include_path`; a task from an include folder is
passed by its YAML path).
"""

from __future__ import annotations

import datetime
import json
import shlex
from pathlib import Path

from harness.core.atomic import atomic_file
from harness.store import db as store


class RunNotFound(ValueError):
    pass


def find_run(db: Path, prefix: str) -> dict:
    """One run (config and env parsed) by its id or a unique prefix of one."""
    prefix = prefix.strip()
    with store.reader(db) as con:
        cur = con.execute("SELECT * FROM runs WHERE run_id LIKE ? || '%' ORDER BY run_id", [prefix])
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
        matrices = {r[0] for r in con.execute("SELECT DISTINCT matrix FROM matrix_cells WHERE run_id LIKE ? || '%'",
                                               [prefix]).fetchall()}
    if not rows:
        raise RunNotFound(f"run {prefix!r}: no such run in {db} (list them with `harness runs`)")
    if len(rows) > 1:
        raise RunNotFound(f"run {prefix!r}: {len(rows)} runs start so ({', '.join(r[0] for r in rows[:5])}...); "
                          f"give more of the id")
    run = dict(zip(cols, rows[0]))
    run["config"], run["env"] = json.loads(run["config"] or "{}"), json.loads(run["env"] or "{}")
    run["matrices"] = sorted(matrices)
    return run


RUNS_SQL = """
SELECT r.run_id, string_agg(DISTINCT m.matrix, ',') AS matrix, r.kind, r.model, r.method, r.arm, r.seed, r.status,
       round(avg(s.value) FILTER (WHERE s.task_group = 'learn'), 4) AS learn,
       round(avg(-s.gain / nullif(abs(s.base_value), 0)) FILTER (WHERE s.task_group = 'forget'), 4) AS forget,
       r.finished_at
FROM runs r LEFT JOIN matrix_cells m USING (run_id) LEFT JOIN run_scores s USING (run_id)
WHERE {where}
GROUP BY ALL ORDER BY r.finished_at DESC NULLS LAST, r.run_id LIMIT ?
"""


def list_runs(db: Path, filters: dict[str, str | int | None], limit: int) -> tuple[list[str], list[tuple]]:
    """Runs, newest first, filtered by equality on matrix, model, method, arm, seed, status or kind."""
    where, params = ["true"], []
    for key, value in filters.items():
        if value is not None:
            where.append("r.run_id IN (SELECT run_id FROM matrix_cells WHERE matrix = ?)" if key == "matrix"
                         else f"r.{key} = ?")
            params.append(value)
    with store.reader(db) as con:
        cur = con.execute(RUNS_SQL.format(where=" AND ".join(where)), params + [limit])
        return [d[0] for d in cur.description], cur.fetchall()


def scores(db: Path, run_id: str) -> tuple[list[str], list[tuple]]:
    """Every metric of a run with a normal 95% interval (value +- 1.96 stderr, from lm-eval's per-example stderr:
    it covers the examples, not seeds) and the base model's value."""
    sql = """
    SELECT e.task, e.task_group AS "group", e.metric, round(e.value, 4) AS value,
           CASE WHEN e.stderr IS NOT NULL THEN format('[{:.4f}, {:.4f}]', e.value - 1.96 * e.stderr,
                                                     e.value + 1.96 * e.stderr) END AS "95% interval",
           e.n, round(b.value, 4) AS base, e.is_primary AS primary
    FROM evals e JOIN runs r USING (run_id)
    LEFT JOIN evals b ON b.run_id = r.base_run_id AND b.task = e.task AND b.metric = e.metric AND r.kind = 'sft'
    WHERE e.run_id = ? ORDER BY e.task_group DESC, e.task, NOT e.is_primary, e.metric"""
    with store.reader(db) as con:
        cur = con.execute(sql, [run_id])
        return [d[0] for d in cur.description], cur.fetchall()


def cost(db: Path, run_id: str) -> dict:
    with store.reader(db) as con:
        cur = con.execute("SELECT * FROM costs WHERE run_id = ?", [run_id])
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else {}


def primary(db: Path, run: dict) -> tuple[list[str], list[str], list[tuple]]:
    """The primary family of each matrix the run belongs to (as `harness report` last computed it) and the primary
    comparisons that involve the run's method and arm: (family lines, columns, rows)."""
    with store.reader(db) as con:
        has = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'stat_params' "
                          "AND column_name = 'family'").fetchone()[0]
        if not has or not run["matrices"] or run["kind"] != "sft":
            return [], [], []
        fams = con.execute("SELECT matrix, family FROM stat_params WHERE matrix IN (SELECT unnest(?)) "
                           "ORDER BY matrix", [run["matrices"]]).fetchall()
        cur = con.execute("""
            SELECT matrix, CASE kind WHEN 'arms' THEN a_method || ': ' || a_arm || ' vs ' || b_arm
                                     ELSE a_arm || ': ' || a_method || ' vs ' || b_method END AS comparison,
                   metric, round(diff, 4) AS diff, round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high,
                   p_holm, significant
            FROM stat_comparisons WHERE family = 'primary' AND matrix IN (SELECT unnest(?)) AND model = ?
              AND ((kind = 'arms' AND a_method = ? AND ? IN (a_arm, b_arm))
                   OR (kind = 'methods' AND a_arm = ? AND ? IN (a_method, b_method)))
            ORDER BY matrix, kind, comparison, metric""",
                          [run["matrices"], run["model"], run["method"], run["arm"], run["arm"], run["method"]])
        return [f"{m}: {f}" for m, f in fams if f], [d[0] for d in cur.description], cur.fetchall()


# ---------------------------------------------------------------------------------------------------------------
# The lm_eval command lines


def _weights(run: dict, results: Path) -> tuple[str, str | None, str]:
    """(pretrained folder, adapter folder or None, tokenizer folder) of the model a run evaluated."""
    from harness import models

    weights = run.get("weights_path")
    if run["kind"] == "sft":
        if not weights or not Path(weights).exists():
            raise RunNotFound(f"run {run['run_id']}: its weights were not kept (keep_weights), so lm_eval cannot "
                              f"load them")
        if run["method_kind"] == "lora":
            base = json.loads((Path(weights) / "adapter_config.json").read_text())["base_model_name_or_path"]
            return base, weights, weights
        return weights, None, weights
    ref = models.resolve(run["model"])  # a base evaluation: the model itself (an adapter is applied by peft=)
    if ref.kind == "adapter":
        return str(models.model_path(ref.base, results, log=lambda *a: None)), ref.path, ref.path
    folder = str(models.model_path(ref, results, log=lambda *a: None))
    return folder, None, folder


def _max_length(tokenizer_folder: str) -> int | None:
    """The context length the harness gave lm-eval: the tokenizer's model_max_length (when it states a real one)."""
    path = Path(tokenizer_folder) / "tokenizer_config.json"
    n = json.loads(path.read_text()).get("model_max_length") if path.exists() else None
    return int(n) if isinstance(n, (int, float)) and n < 1e9 else None


def lm_eval_commands(run: dict, results: Path) -> dict[str, str]:
    """Task group -> a shell command running the plain lm-eval CLI on this run's weights and tasks, which reproduces
    its stored scores (values; a bootstrapped stderr differs: lm-eval's CLI bootstraps 100,000 times, the harness
    100)."""
    from harness.eval.tasks import TASKS_DIR, local_task_path, reads_data_from_cwd

    pretrained, adapter, tokenizer = _weights(run, results)
    env, ev = run["env"], run["config"]["eval"]
    args = {"pretrained": pretrained, "peft": adapter, "tokenizer": tokenizer, "dtype": "float32",
            "mixed_precision_dtype": "bfloat16" if env.get("autocast") == "torch.bfloat16" else None,
            # the attention it was scored with (runs stored before eval_attention existed: the one it trained with)
            "attn_implementation": env.get("eval_attention") or env.get("attention"),
            "max_length": _max_length(tokenizer)}
    model_args = ",".join(f"{k}={v}" for k, v in args.items() if v is not None)
    include = ev.get("include", [])
    out = {}
    for group, chat in (("learn", True), ("forget", False)):
        names = ev.get(group) or []
        if not names:
            continue
        tasks = [n if local_task_path(n) == local_task_path(n, include) else str(local_task_path(n, include))
                 for n in names]  # built-in tasks by name, included ones by their YAML path
        cwd = sorted({str(Path(t).parent) for t in tasks if t.endswith(".yaml") and reads_data_from_cwd(Path(t))})
        cmd = ["lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(tasks),
               "--include_path", str(TASKS_DIR), "--device", env.get("device", "cpu"),
               "--batch_size", str(ev.get("batch_size", 32)), "--seed", "0"]
        if ev.get("limit") is not None:
            cmd += ["--limit", str(ev["limit"])]
        if chat:
            cmd += ["--apply_chat_template", "--fewshot_as_multiturn"]
        # lm-eval reads relative data_files from the working directory: run from the task's folder
        cd = f"cd {shlex.quote(cwd[0])} && " if len(cwd) == 1 else ""
        note = (f"  # data_files relative to {', '.join(cwd)}: name a loader (harness/tasks/jsonl_data.py) in "
                f"those YAMLs" if len(cwd) > 1 else "")
        out[group] = f"{cd}HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {shlex.join(cmd)}{note}"
    return out


# ---------------------------------------------------------------------------------------------------------------
# Files


def to_parquet(db: Path, out: Path) -> list[Path]:
    """Every table and view of the database as OUT/<name>.parquet (each written beside its target, then moved)."""
    paths = []
    with store.reader(db) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                           "'main' ORDER BY table_name").fetchall()]
        for name in names:
            paths.append(out / f"{name}.parquet")
            with atomic_file(paths[-1]) as tmp:
                con.execute(f"COPY (SELECT * FROM \"{name}\") TO '{tmp}' (FORMAT parquet)")
    return paths


def results_json(db: Path, run: dict) -> dict:
    """A run's scores in the shape of lm-eval's `results_<date>.json` (results, versions, n-shot, higher_is_better,
    n-samples, config), so tools that read lm-eval output read harness runs."""
    with store.reader(db) as con:
        rows = con.execute("SELECT task, metric, value, stderr, n, higher_is_better FROM evals WHERE run_id = ? "
                           "ORDER BY task, NOT is_primary, metric", [run["run_id"]]).fetchall()
    results, hib, n = {}, {}, {}
    for task, metric, value, stderr, count, higher in rows:
        r = results.setdefault(task, {"alias": task})
        r[f"{metric},none"] = value
        r[f"{metric}_stderr,none"] = "N/A" if stderr is None else stderr
        hib.setdefault(task, {})[metric] = bool(higher)
        n[task] = {"original": count, "effective": count}
    finished = run.get("finished_at")
    return {"results": results, "versions": {t: 1 for t in results}, "n-shot": {t: 0 for t in results},
            "higher_is_better": hib, "n-samples": n,
            "config": {"model": "hf", "model_name": run["model"], "limit": run["config"].get("eval", {}).get("limit"),
                       "batch_size": run["config"].get("eval", {}).get("batch_size"), "random_seed": 0,
                       "numpy_seed": 0, "torch_seed": 0, "fewshot_seed": 0, "bootstrap_iters": 100},
            "model_name": run["model"], "lm_eval_version": run["env"].get("lm_eval"),
            "date": finished.timestamp() if isinstance(finished, datetime.datetime) else None,
            "harness": {"run_id": run["run_id"], "kind": run["kind"], "method": run["method"], "arm": run["arm"],
                        "seed": run["seed"], "matrices": run.get("matrices", [])}}


def to_lm_eval(db: Path, out: Path, run_ids: list[str] | None = None) -> list[Path]:
    """OUT/<run_id>/results_<finished>.json for each run (default: every finished run)."""
    if run_ids is None:
        with store.reader(db) as con:
            run_ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'ok' ORDER BY run_id")
                       .fetchall()]
    paths = []
    for rid in run_ids:
        run = find_run(db, rid)
        stamp = (run["finished_at"] or datetime.datetime.now()).strftime("%Y-%m-%dT%H-%M-%S")
        path = out / rid / f"results_{stamp}.json"
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(results_json(db, run), indent=2, default=str) + "\n")
        paths.append(path)
    return paths
