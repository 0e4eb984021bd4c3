"""Data arms: a source (the skills-world pool or user data) and a recipe of curation steps -> a cached data set.

A data set's id is a hash of its resolved source and steps (not of the arm's name), so arms and matrices that ask
for the same data share one build under results/data/<id>/: data.jsonl, card.json (recipe, counts and score
distributions per step, what models cost) and decisions.parquet (every dropped example, its text and why).

Sources:
  skills_pool                 the seeded skills-world pool (a named source sets size, seed, mix, defects)
  a .jsonl file               one JSON object per line: {prompt, response} or a chat {messages: [{role, content}]}
  a data set folder           written by Hugging Face `datasets` save_to_disk (a DatasetDict needs `split`)
  hub:OWNER/NAME              a hub data set; needs a network and HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0
A named source (`sources:` in a matrix) takes `path` or `hub` plus: skip_bad (skip and count malformed rows instead
of stopping), split, columns (e.g. {prompt: question, response: answer}), and for hub: name, revision.

Chat rows: the last turn must be the assistant's; it is the response (the only tokens that carry loss). A single
user turn becomes the prompt as is. Longer histories (a system turn, earlier exchanges) are rendered into the prompt
as a plain transcript, "System: ...\\n\\nUser: ...\\n\\nAssistant: ...\\n\\nUser: ...", which training then wraps in
the model's chat template as one user turn: the whole context stays visible to the model, but earlier assistant
turns do not get the template's own assistant markers. The original `messages` are kept on the row.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import models
from harness.data import curate, generate, world
from harness.spec import Arm, Matrix, SpecError, content_id, resolve_paths
from harness.train import cost


@dataclass(frozen=True)
class Recipe:
    source: dict  # resolved source spec
    steps: list[tuple[str, dict]]  # (step name, params) with `like` resolved to a data set id
    seed: int
    id: str


FILE_KEYS = {"path", "skip_bad", "split", "columns"}
HUB_KEYS = {"hub", "name", "split", "revision", "skip_bad", "columns"}
POOL_KEYS = {"size", "seed", "mix", "defects"}


def _folder_fingerprint(path: Path) -> str:
    """Every file's name and size plus the small metadata files' bytes (state.json holds datasets' own
    fingerprint of the content): cheap, and it changes when the saved data set does."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
        if f.suffix == ".json":
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _user_source(spec: dict, where: str, skip_bad: bool) -> dict:
    """A file, folder or hub source -> its resolved spec. Optional keys are written only when set, so a source's
    id does not change when a new option appears."""
    opts = {k: spec[k] for k in ("split", "columns", "name", "revision") if spec.get(k) is not None}
    if spec.get("skip_bad") or skip_bad:
        opts["skip_bad"] = True
    if "hub" in spec:
        return {"kind": "hub", "id": str(spec["hub"]), **opts}
    path = Path(spec["path"])
    if path.is_dir():
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            raise SpecError(f"{where}: {path} is not a folder written by datasets' save_to_disk "
                            f"(no dataset_info.json or dataset_dict.json)")
        return {"kind": "hf_disk", "path": str(path.resolve()), "fingerprint": _folder_fingerprint(path), **opts}
    if not path.exists():
        raise SpecError(f"{where}: file not found: {path}")
    if path.suffix != ".jsonl":
        raise SpecError(f"{where}: {path}: expected a .jsonl file or a datasets folder")
    return {"kind": "jsonl", "path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            **opts}


def _source_spec(name: str, m: Matrix, arm: str, skip_bad: bool = False) -> dict:
    where = f"arms.{arm}.source"
    if name in m.sources:
        spec, where = dict(m.sources[name]), f"sources.{name}"
        kind = spec.pop("kind", "skills_pool")
        allowed = FILE_KEYS if "path" in spec else HUB_KEYS if "hub" in spec else POOL_KEYS
        if kind != "skills_pool":
            raise SpecError(f"{where}.kind: unknown kind {kind!r}; expected skills_pool (files and folders take "
                            f"`path`, hub data sets `hub`)")
        if set(spec) - allowed:
            raise SpecError(f"{where}: unknown key {sorted(set(spec) - allowed)[0]!r}; expected {sorted(allowed)}")
        if allowed is not POOL_KEYS:
            return _user_source(spec, where, skip_bad)
    elif name == "skills_pool":
        spec = {}
    elif name.startswith("hub:"):
        return _user_source({"hub": name[4:]}, where, skip_bad)
    elif name.endswith(".jsonl") or Path(name).is_dir():
        return _user_source({"path": name}, where, skip_bad)
    else:
        known = ", ".join(["skills_pool", *m.sources]) or "skills_pool"
        raise SpecError(f"{where}: unknown source {name!r}; expected one of {known}, a .jsonl file, a datasets "
                        f"folder or hub:OWNER/NAME")
    return {"kind": "skills_pool", "size": int(spec.get("size", 8000)), "seed": int(spec.get("seed", 0)),
            "mix": {**world.DEFAULT_MIX, **spec.get("mix", {})},
            "defects": {**world.DEFAULT_DEFECTS, **spec.get("defects", {})}}


# a scalar step value is the step's main parameter: {filter: verifier}, {diversity: 1000}, {distill: smollm2-135m}
MAIN_PARAM = {"filter": "scorer", "random": "n", "balance": "n", "diversity": "n", "dedup": "method",
              "distill": "teacher", "best_of_k": "policy"}


def _step(raw, arm: str, i: int) -> tuple[str, dict]:
    """'dedup' | {dedup: {...}} | {filter: verifier}; parameters are checked against the step's known keys, and a
    model's fingerprint joins the parameters (a changed teacher gives a new data set id)."""
    where = f"arms.{arm}.steps.{i}"
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, params = next(iter(raw.items()))
    else:
        raise SpecError(f"{where}: expected a step name or a one-key mapping, got {raw!r}")
    if name not in curate.STEPS:
        raise SpecError(f"{where}: unknown step {name!r}; expected one of {', '.join(curate.STEPS)}")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        if name not in MAIN_PARAM:
            raise SpecError(f"{where}.{name}: expected a mapping of parameters, got {params!r}")
        params = {MAIN_PARAM[name]: params}
    unknown = sorted(set(params) - curate.STEP_KEYS[name])
    if unknown:
        raise SpecError(f"{where}.{name}.{unknown[0]}: unknown key; expected one of "
                        f"{', '.join(sorted(curate.STEP_KEYS[name]))}")
    scorer = params.get("scorer")
    if scorer is not None and scorer not in curate.SCORERS:
        raise SpecError(f"{where}.{name}.scorer: unknown scorer {scorer!r}; expected one of "
                        f"{', '.join(curate.SCORERS)}")
    for key in curate.MODEL_KEYS:
        if key in params:
            try:
                params = {**params, f"{key}_fingerprint": models.resolve(str(params[key])).fingerprint}
            except models.ModelError as e:
                raise SpecError(f"{where}.{name}.{key}: {e}") from None
    return name, params


def resolve_recipes(m: Matrix, skip_bad: bool = False) -> dict[str, Recipe]:
    """Arm name -> Recipe with a content id; arms referring to others (random like: X) are resolved after X.
    skip_bad: skip malformed rows of every user-data source (`harness data build --skip-bad`)."""
    out: dict[str, Recipe] = {}
    visiting: set[str] = set()

    def resolve(arm: str) -> Recipe:
        if arm in out:
            return out[arm]
        if arm in visiting:
            raise SpecError(f"arms.{arm}: circular reference through `like`")
        visiting.add(arm)
        spec = m.arms[arm]
        source = _source_spec(spec.source, m, arm, skip_bad)
        steps = []
        for i, raw in enumerate(spec.steps):
            name, params = _step(raw, arm, i)
            if "like" in params:
                if params["like"] not in m.arms:
                    raise SpecError(f"arms.{arm}.steps.{i}.like: unknown arm {params['like']!r}; "
                                    f"expected one of {', '.join(m.arms)}")
                params = {**params, "like_dataset": resolve(params["like"]).id}
            steps.append((name, params))
        seed = source.get("seed", 0)
        # the data's content (sha256 / fingerprint), not where it lies, identifies a user file
        rid = content_id({"source": {k: v for k, v in source.items() if k != "path"},
                          "steps": [[n, {k: v for k, v in p.items() if k != "like"}] for n, p in steps]})
        out[arm] = Recipe(source, steps, seed, rid)
        visiting.discard(arm)
        return out[arm]

    for arm in m.arms:
        resolve(arm)
    return out


RECIPE_KEYS = {"name", "source", "steps", "sources"}


def load_recipe(path: Path, arm: str | None = None, skip_bad: bool = False) -> tuple[dict[str, Recipe], str]:
    """A recipe file -> (recipes, the arm to build). The file is one arm's {source, steps} (with optional `sources:`
    and `name:`), or a matrix file, whose arm `arm` is built (with the arms it refers to)."""
    from harness.spec import load_matrix

    if not path.exists():
        raise SpecError(f"{path}: file not found (expected a recipe YAML with source and steps, or a matrix file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if isinstance(raw, dict) and "arms" in raw:
        m = load_matrix(path)
        if arm is None or arm not in m.arms:
            raise SpecError(f"{path}: a matrix file; pass --arm with one of {', '.join(m.arms)}")
    else:
        if not isinstance(raw, dict) or "source" not in raw and "steps" not in raw:
            raise SpecError(f"{path}: expected a mapping with source and steps (or a matrix file with arms)")
        unknown = sorted(set(raw) - RECIPE_KEYS)
        if unknown:
            raise SpecError(f"{path}: {unknown[0]}: unknown key; expected one of {', '.join(sorted(RECIPE_KEYS))}")
        source, steps, sources = raw.get("source", "skills_pool"), raw.get("steps") or [], raw.get("sources") or {}
        if not isinstance(source, str) or not isinstance(steps, list) or not isinstance(sources, dict) \
                or not all(isinstance(v, dict) for v in sources.values()):
            raise SpecError(f"{path}: expected source: a string, steps: a list, sources: a mapping of mappings")
        arm = arm or str(raw.get("name", path.stem))
        m = resolve_paths(Matrix(name=arm, sources=sources, arms={arm: Arm(source, steps)}), path.resolve().parent)
    recipes = resolve_recipes(m, skip_bad)
    return recipes, arm


# ---------------------------------------------------------------------------------------------------------------
# Loading sources. Every user row becomes {id, prompt, response, ...its other fields}; a malformed row stops the
# build with its location, or with skip_bad is skipped and counted in the card.

ROLES = ("system", "user", "assistant")


def render_messages(messages, where: str) -> tuple[str, str]:
    """A chat -> (prompt, response): see the module docstring for how a history is rendered."""
    if not isinstance(messages, list) or not messages:
        raise SpecError(f"{where}: messages: expected a non-empty list of {{role, content}} turns")
    for i, t in enumerate(messages):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise SpecError(f"{where}: messages.{i}: expected {{role: system|user|assistant, content: a string}}")
    if messages[-1]["role"] != "assistant":
        raise SpecError(f"{where}: messages: the last turn must be the assistant's (the response to learn)")
    history = messages[:-1]
    if not any(t["role"] == "user" for t in history):
        raise SpecError(f"{where}: messages: expected a user turn before the assistant's response")
    if len(history) == 1:
        return history[0]["content"], messages[-1]["content"]
    return "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in history), messages[-1]["content"]


def to_example(raw, where: str, default_id: str, columns: dict | None = None) -> dict:
    """One user row -> an example; raises SpecError naming `where` (file:line, or folder/hub row)."""
    col = {"prompt": "prompt", "response": "response", "messages": "messages", **(columns or {})}
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected an object, got {type(raw).__name__}")
    rid = str(raw.get("id", default_id))
    if raw.get(col["messages"]) is not None:
        prompt, response = render_messages(raw[col["messages"]], where)
        return {**raw, "id": rid, "prompt": prompt, "response": response}
    prompt, response = raw.get(col["prompt"]), raw.get(col["response"])
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise SpecError(f"{where}: expected an object with string fields {col['prompt']} and {col['response']} "
                        f"(or a {col['messages']} list)")
    return {**raw, "id": rid, "prompt": prompt, "response": response}


@dataclass
class SourceReport:
    n_read: int = 0  # rows or non-empty lines read
    n_bad: int = 0  # malformed rows skipped (skip_bad)
    bad: list[str] | None = None  # the first few reasons

    def skip(self, reason: str) -> None:
        self.n_bad += 1
        if len(self.bad) < 5:
            self.bad.append(reason)


def read_jsonl(path: Path, skip_bad: bool = False, columns: dict | None = None,
               report: SourceReport | None = None) -> list[dict]:
    """User SFT data: one JSON object per line, {prompt, response} or {messages}."""
    report = report if report is not None else SourceReport(bad=[])
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            report.n_read += 1
            try:
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SpecError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                rows.append(to_example(raw, f"{path}:{n}", f"{path.stem}-{n}", columns))
            except SpecError as e:
                if not skip_bad:
                    raise
                report.skip(str(e))
    return rows


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _open_hf(source: dict):
    """The source's rows as a datasets.Dataset, from a save_to_disk folder or (with a network) the hub."""
    import datasets

    split = source.get("split")
    if source["kind"] == "hf_disk":
        ds = datasets.load_from_disk(source["path"])
        where = source["path"]
    else:
        where = f"hub:{source['id']}"
        if _offline():
            raise SpecError(f"source {where}: offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); with a network "
                            f"set HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0, or save_to_disk elsewhere and use the folder")
        from urllib.parse import urlparse

        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        try:  # fail in seconds, not after the client's retries, when there is no network
            socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
        except OSError as e:
            raise SpecError(f"source {where}: cannot reach {constants.ENDPOINT} ({e})") from None
        ds = datasets.load_dataset(source["id"], source.get("name"), split=split or "train",
                                   revision=source.get("revision"))
        split = None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SpecError(f"source {where}: a DatasetDict; set split to one of {', '.join(ds)}")
        ds = ds[split]
    return ds, where


def load_source(source: dict) -> tuple[list[dict], SourceReport]:
    report = SourceReport(bad=[])
    if source["kind"] == "skills_pool":
        rows = world.generate_pool(source["size"], source["seed"], source["mix"], source["defects"])
        report.n_read = len(rows)
        return rows, report
    skip_bad, columns = source.get("skip_bad", False), source.get("columns")
    if source["kind"] == "jsonl":
        rows = read_jsonl(Path(source["path"]), skip_bad, columns, report)
        where = source["path"]
    else:
        ds, where = _open_hf(source)
        name = Path(where).name.replace("hub:", "").replace("/", "-")
        rows = []
        for i, raw in enumerate(ds):
            report.n_read += 1
            try:
                rows.append(to_example(raw, f"{where} row {i}", f"{name}-{i}", columns))
            except SpecError as e:
                if not skip_bad:
                    raise
                report.skip(str(e))
    if not rows:
        raise SpecError(f"{where}: no examples" + (f" ({report.n_bad} malformed rows skipped)" if report.n_bad else ""))
    repeated = next((k for k, n in Counter(r["id"] for r in rows).items() if n > 1), None)
    if repeated is not None:  # every decision names an example by its id
        raise SpecError(f"{where}: id {repeated!r} is used by more than one row; ids must be unique")
    return rows, report


# ---------------------------------------------------------------------------------------------------------------
# Building.


def dataset_dir(results: Path, dataset_id: str) -> Path:
    return results / "data" / dataset_id


def load_rows(results: Path, dataset_id: str) -> list[dict]:
    path = dataset_dir(results, dataset_id) / "data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(r: Recipe, final: Path, body: str, card: dict, decisions: list[tuple]) -> None:
    """data.jsonl, decisions.parquet and card.json into a temp folder, renamed into place: complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = final.parent / f".{r.id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "data.jsonl").write_text(body)
    cols = list(zip(*decisions)) if decisions else [[]] * 8
    types = {"dataset_id": pa.string(), "step_index": pa.int32(), "step": pa.string(), "example_id": pa.string(),
             "reason": pa.string(), "score": pa.float64(), "prompt": pa.string(), "response": pa.string()}
    pq.write_table(pa.table({c: pa.array(v, t) for (c, t), v in zip(types.items(), cols)}),
                   tmp / "decisions.parquet")
    (tmp / "card.json").write_text(json.dumps(card, indent=1))
    try:
        os.replace(tmp, final)
    except OSError:  # built concurrently by another process: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


def build(recipes: dict[str, Recipe], results: Path, arms: list[str] | None = None, log=print) -> dict[str, Path]:
    """Build (or find cached) the data set of each arm; returns arm -> folder."""
    out: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    order: list[str] = []

    def visit(arm: str) -> None:  # arms that others refer to (random like: X) are built first
        for _, p in recipes[arm].steps:
            if "like" in p:
                visit(p["like"])
        if arm not in order:
            order.append(arm)

    for arm in arms or recipes:
        visit(arm)
    for arm in order:
        r = recipes[arm]
        final = dataset_dir(results, r.id)
        if (final / "card.json").exists():
            out[arm] = final
            sizes[arm] = json.loads((final / "card.json").read_text())["n_examples"]
            continue
        t0 = time.perf_counter()
        rows, report = load_source(r.source)
        n_source = len(rows)
        steps_card, decisions, total = [], [], generate.Meter()
        for i, (name, params) in enumerate(r.steps):
            ctx = curate.Context(seed=r.seed, sizes=sizes, results=results)
            t1 = time.perf_counter()
            res = curate.STEPS[name](rows, params, ctx)
            by_id = {x["id"]: x for x in rows}
            steps_card.append({"step": name, "params": params, "n_in": len(rows), "n_out": len(res.kept),
                               "score_stats": res.score_stats, "seconds": time.perf_counter() - t1,
                               "generated_tokens": ctx.meter.generated_tokens,
                               "compute_seconds": ctx.meter.compute_seconds,
                               "cache": {"computed": ctx.meter.computed, "cached": ctx.meter.cached}})
            decisions += [(r.id, i, name, ex_id, reason, score, by_id[ex_id]["prompt"], by_id[ex_id]["response"])
                          for ex_id, reason, score in res.dropped]
            total.add(ctx.meter)
            rows = res.kept
            if not rows:
                raise curate.RecipeError(f"arm {arm}: step {i} ({name}) left no examples of {steps_card[-1]['n_in']}")
        body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        card = {"dataset_id": r.id, "recipe": {"source": r.source, "steps": [[n, p] for n, p in r.steps]},
                "parent": next((p["like_dataset"] for _, p in r.steps if "like_dataset" in p), None),
                "n_examples": len(rows), "n_by_skill": dict(Counter(x.get("skill", "all") for x in rows)),
                "n_source": n_source, "n_bad": report.n_bad, "bad_examples": report.bad,
                "content_hash": hashlib.sha256(body.encode()).hexdigest(), "steps": steps_card,
                "build_seconds": time.perf_counter() - t0,
                "generated_tokens": total.generated_tokens,
                "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        # curation is paid for by the arm that needs it (an estimate, like every price: see cost.py): the build's wall
        # time, or the model time its generations cost when cached ones (another arm's) made the build quicker
        card["device_hours"] = max(card["build_seconds"], total.compute_seconds) / 3600
        device = generate._device() if total.compute_seconds else "cpu"
        card["cost_usd"] = card["device_hours"] * cost.price_per_hour(cost.hardware(device, os.cpu_count() or 1))
        _write(r, final, body, card, decisions)
        out[arm], sizes[arm] = final, len(rows)
        log(f"data {arm}: {len(rows):,} examples ({' -> '.join(str(s['n_out']) for s in steps_card) or 'source'}) "
            f"in {card['build_seconds']:.1f}s")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reading a built data set back (`harness data show`).


def find(results: Path, prefix: str) -> Path:
    """The data set folder whose id is `prefix` or starts with it."""
    hits = sorted(p for p in (results / "data").glob(f"{prefix}*") if (p / "card.json").exists()) \
        if (results / "data").is_dir() else []
    if len(hits) != 1:
        raise SpecError(f"data set {prefix!r}: {'no' if not hits else 'more than one'} match under {results / 'data'}"
                        + (f" ({', '.join(p.name for p in hits)})" if hits else ""))
    return hits[0]


def stats_summary(stats: dict | None) -> str:
    """One line for a step's score_stats."""
    if not stats:
        return ""
    if "acceptance_rate" in stats:
        best, cands = stats["best"] or {}, stats["candidates"] or {}
        return (f"{stats['scorer']}: accepted {stats['acceptance_rate']:.0%} of prompts; best-of-{stats['k']} mean "
                f"{best.get('mean', float('nan')):.3g}, candidate mean {cands.get('mean', float('nan')):.3g}")
    if "scorer" in stats:
        q = stats.get("quantiles", {})
        return (f"{stats['scorer']}: mean {stats['mean']:.3g}, p10 {q.get('p10', 0):.3g}, p50 {q.get('p50', 0):.3g}, "
                f"p90 {q.get('p90', 0):.3g}")
    if "covering_radius" in stats:
        return f"{stats['method']} on {stats['embed']}: covering radius {stats['covering_radius']:.3f}"
    if "near_duplicates" in stats:
        return f"{stats['near_duplicates']} near duplicates ({stats['method']}, threshold {stats['threshold']:g})"
    if "changed" in stats:
        return f"teacher {stats['teacher']}: changed {stats['changed']:.0%} of responses"
    return stats.get("note", json.dumps(stats))


def short_params(params: dict) -> str:
    """A step's parameters as the user wrote them (without the ids and fingerprints resolution adds)."""
    return ", ".join(f"{k}={v}" for k, v in params.items() if not k.endswith(("_fingerprint", "_dataset")))


def card_summary(folder: Path, n_examples: int = 3) -> dict:
    """What `harness data show` prints: header lines, a steps table, kept and dropped examples."""
    import pyarrow.parquet as pq

    card = json.loads((folder / "card.json").read_text())
    src = card["recipe"]["source"]
    where = src.get("path") or src.get("id") or f"{src.get('size', 0):,} rows, seed {src.get('seed')}"
    header = [f"data set {card['dataset_id']}: {card['n_examples']:,} examples from {src['kind']} ({where})",
              f"source rows {card.get('n_source', '?')}, malformed skipped {card.get('n_bad', 0)}; parent "
              f"{card['parent'] or '-'}; built in {card['build_seconds']:.1f}s",
              f"curation cost: {card.get('generated_tokens', 0):,} generated tokens, "
              f"{card.get('device_hours', 0) * 3600:.1f} device-seconds of model compute",
              "by skill: " + ", ".join(f"{k} {v}" for k, v in sorted(card["n_by_skill"].items()))]
    steps = [(i, s["step"], short_params(s["params"]), s["n_in"], s["n_out"], s["n_in"] - s["n_out"],
              stats_summary(s.get("score_stats")), round(s.get("seconds", 0), 1)) for i, s in enumerate(card["steps"])]
    with (folder / "data.jsonl").open() as f:
        kept = [json.loads(next(f)) for _ in range(min(n_examples, card["n_examples"]))]
    dropped = pq.read_table(folder / "decisions.parquet").to_pylist()
    by_step: dict[int, list[dict]] = {}
    for d in dropped:
        if len(by_step.setdefault(d["step_index"], [])) < n_examples:
            by_step[d["step_index"]].append(d)
    return {"header": header, "steps": steps, "kept": kept,
            "dropped": [d for i in sorted(by_step) for d in by_step[i]]}
