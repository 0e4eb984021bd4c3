"""Scoring with lm-eval: tasks/ YAMLs (or registry task names), an in-memory model, per-sample rows kept.

Learn tasks are rendered through the model's chat template (the format fine-tuning teaches); forget tasks are scored
on the raw language model (what the base knew), so the two groups are two simple_evaluate calls.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.ids import stable_hash
from harness.data import world

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


class TaskNotFound(ValueError):
    pass


@dataclass
class TaskScores:
    metrics: list[dict] = field(default_factory=list)  # task, task_group, metric, value, stderr, n, higher_is_better, is_primary
    samples: list[dict] = field(default_factory=list)  # task, task_group, doc_id, prompt, target, response, score, metrics (json)


def local_task_path(name: str, tasks_dir: Path = TASKS_DIR) -> Path | None:
    path = tasks_dir / f"{name}.yaml"
    return path if path.exists() else None


def task_config(name: str, tasks_dir: Path = TASKS_DIR) -> dict | str:
    """A tasks/ YAML as a config dict with data_files made absolute (lm-eval resolves them against the CWD);
    a registry task name is passed through as the string."""
    path = local_task_path(name, tasks_dir)
    if path is None:
        return name
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(path)
    files = cfg.get("dataset_kwargs", {}).get("data_files")
    if isinstance(files, dict):
        cfg["dataset_kwargs"]["data_files"] = {k: str((path.parent / v).resolve()) for k, v in files.items()}
    return cfg


def task_fingerprint(names: list[str], tasks_dir: Path = TASKS_DIR) -> str:
    """A hash of the task definitions and their data, so a changed eval set gives new cell ids."""
    parts = []
    for name in sorted(names):
        path = local_task_path(name, tasks_dir)
        if path is None:
            parts.append(("registry", name))
            continue
        # The YAML as written (data_files relative to tasks/) plus the data bytes: the same tasks give the
        # same ids in any checkout, wherever it lives.
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(path)
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        data = sorted(stable_hash((path.parent / p).read_bytes()) for p in files.values())
        parts.append((name, json.dumps(cfg, sort_keys=True, default=str), data))
    return f"{stable_hash(parts):016x}"


def check_tasks(names: list[str], tasks_dir: Path = TASKS_DIR) -> list[str]:
    """Names that are neither in tasks/ nor in lm-eval's registry (indexing the registry costs ~6 s, so only then)."""
    missing = [n for n in names if local_task_path(n, tasks_dir) is None]
    if not missing:
        return []
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    return [n for n in missing if n not in known]


@functools.cache
def _tasks(names: tuple[str, ...], tasks_dir: Path):
    """The lm-eval Task objects, built (datasets loaded, docs processed) once per process and reused by every cell
    a worker evaluates; each evaluation still builds its own requests from them."""
    from lm_eval.tasks import TaskManager

    registry = any(local_task_path(n, tasks_dir) is None for n in names)
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=registry)
    try:
        loaded = manager.load([task_config(n, tasks_dir) for n in names])
    except KeyError as e:
        raise TaskNotFound(f"unknown task {e}: not in {tasks_dir} nor in lm-eval's registry "
                           f"(see `lm_eval ls tasks`)") from None
    return manager, list(loaded["tasks"].values())


def _sample_row(task: str, s: dict, output_type: str, primary: str) -> dict:
    """One per-sample row: the rendered prompt, target, model output and every per-sample metric as a float."""
    metrics = {}
    for k in s.get("metrics", []):
        v = s.get(k)
        if isinstance(v, (list, tuple)):  # loglikelihood_rolling metrics arrive as (loglik, units)
            ll, units = v
            v = -ll / (units * math.log(2)) if k == "bits_per_byte" else math.exp(-ll / units)
        metrics[k] = float(v)
    doc, target = s.get("doc", {}), s.get("target")
    context = s["arguments"][0][0] if s.get("arguments") else ""
    if output_type == "multiple_choice":
        lls = [float(r[0]) for r in s["filtered_resps"]]
        choices = doc.get("choices") or [str(i) for i in range(len(lls))]
        response = str(choices[max(range(len(lls)), key=lls.__getitem__)])
        target = choices[int(target)] if str(target).isdigit() and int(target) < len(choices) else target
    elif output_type == "loglikelihood_rolling":
        context, response = "", ""  # the target text itself is scored
    else:
        response = s["filtered_resps"][0]
        response = response[0] if isinstance(response, (list, tuple)) else str(response)
    return {"task": task, "doc_id": int(s["doc_id"]), "prompt": context, "target": str(target),
            "response": response, "score": metrics.get(primary), "metrics": json.dumps(metrics)}


def _run(model, tokenizer, names: list[str], group: str, chat: bool, tasks_dir: Path, limit: int | None,
         batch_size: int, device: str, autocast) -> TaskScores:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              mixed_precision_dtype=autocast, max_length=getattr(tokenizer, "model_max_length", None))
    manager, tasks = _tasks(tuple(names), tasks_dir)
    res = simple_evaluate(lm, tasks=tasks, task_manager=manager, limit=limit, apply_chat_template=chat,
                          log_samples=True, bootstrap_iters=100, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0, fewshot_random_seed=0)
    out = TaskScores()
    for task, vals in res["results"].items():
        hib = res.get("higher_is_better", {}).get(task, {})
        cfg = res["configs"][task]
        # the first metric of the task's metric_list is its primary score
        metric_names = [m["metric"] for m in cfg.get("metric_list", [])]
        metric_names = [m for m in metric_names if any(k.split(",")[0] == m for k in vals)]
        n = res.get("n-samples", {}).get(task, {}).get("effective")
        for i, m in enumerate(metric_names):
            key = next(k for k in vals if k.split(",")[0] == m)
            stderr = vals.get(key.replace(m, f"{m}_stderr", 1))
            out.metrics.append({"task": task, "task_group": group, "metric": m, "value": float(vals[key]),
                                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                                "n": n, "higher_is_better": bool(hib.get(m, True)), "is_primary": i == 0})
        primary = metric_names[0] if metric_names else None
        out.samples += [_sample_row(task, s, cfg["output_type"], primary) | {"task_group": group}
                        for s in res["samples"].get(task, [])]
    return out


def evaluate(model, tokenizer, learn: list[str], forget: list[str], tasks_dir: Path = TASKS_DIR,
             limit: int | None = None, batch_size: int = 32, device: str = "cpu", autocast=None) -> TaskScores:
    """Score an in-memory model on the learn tasks (chat template on) and the forget tasks (raw LM)."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    model.eval()
    out = TaskScores()
    for names, group, chat in ((learn, "learn", True), (forget, "forget", False)):
        if names:
            part = _run(model, tokenizer, names, group, chat, tasks_dir, limit, batch_size, device, autocast)
            out.metrics += part.metrics
            out.samples += part.samples
    return out


def write_task_data(tasks_dir: Path = TASKS_DIR) -> list[Path]:
    """(Re)generate tasks/data/*.jsonl from the skills world; deterministic, so the committed files never drift."""
    data = {**world.eval_items(), "world_mc": world.fact_mc_items(), "prose_bpb": world.heldout_prose()}
    paths = []
    for name, rows in data.items():
        path = tasks_dir / "data" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths.append(path)
    return paths
