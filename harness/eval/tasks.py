"""Scoring with lm-eval: task YAMLs (tasks/, include folders, paths) or registry task names, an in-memory model,
per-sample rows kept.

Learn tasks are rendered through the model's chat template (the format fine-tuning teaches); forget tasks are scored
on the raw language model (what the base knew), so the two groups are two simple_evaluate calls.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import harness
from harness.core.ids import stable_hash
from harness.data import corpus, world

if TYPE_CHECKING:
    from harness.spec import Matrix

TASKS_DIR = Path(harness.__file__).resolve().parent / "tasks"  # package data: ships in the wheel
# Scoring runs SDPA attention wherever the model has it, whatever it trained with: forward-only, SDPA is the faster
# kernel on CPU too (the demo's evaluation of a cell: 4.3 s with eager attention, 2.9 s with SDPA, the same scores;
# eager wins on CPU only in training, see train.sft.attention_for), and it is what the lm_eval CLI loads.
ATTENTION = "sdpa"


class TaskNotFound(ValueError):
    pass


@dataclass
class TaskScores:
    metrics: list[dict] = field(default_factory=list)  # task, task_group, metric, value, stderr, n, higher_is_better, is_primary
    samples: list[dict] = field(default_factory=list)  # task, task_group, doc_id, prompt, target, response, score, metrics (json)
    attention: str | None = None  # the attention implementation the model was scored with


def _load_yaml(path: Path, resolve_func: bool = True) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=resolve_func)


@functools.cache
def _index(folder: Path) -> dict[str, Path]:
    """Task name -> YAML for every task under `folder` (lm-eval's include_path: every *.yaml, recursively, by its
    `task:` key; files without one, such as templates, are skipped)."""
    out = {}
    for path in sorted(folder.rglob("*.yaml")):
        try:
            name = _load_yaml(path, resolve_func=False).get("task")
        except Exception as e:  # noqa: BLE001  a YAML lm-eval could not read either: say which one
            raise TaskNotFound(f"{path}: not a readable task YAML ({str(e).splitlines()[0]})") from None
        if isinstance(name, str):
            out.setdefault(name, path)
    return out


def task_dirs(include: list[str] | tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Where task names are looked up: the include folders first (a user's task may shadow a built-in), then tasks/."""
    return (*(Path(d).expanduser().resolve() for d in include), TASKS_DIR)


def split_refs(refs: list[str], include: list[str] | tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Task references as names plus include folders: a path to a task YAML becomes its `task:` name, its folder
    joining the include list (so a cell's config names tasks the same way wherever the YAML lives)."""
    names, dirs = [], [str(Path(d).expanduser().resolve()) for d in include]
    for ref in refs:
        if not ref.endswith((".yaml", ".yml")):
            names.append(ref)
            continue
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise TaskNotFound(f"task {ref!r}: no such file")
        name = _load_yaml(path, resolve_func=False).get("task")
        if not isinstance(name, str):
            raise TaskNotFound(f"{ref}: no `task:` name in this YAML (a group or a template?)")
        names.append(name)
        if str(path.parent) not in dirs:
            dirs.append(str(path.parent))
    return names, dirs


def local_task_path(name: str, include: list[str] | tuple[str, ...] = ()) -> Path | None:
    for folder in task_dirs(include):
        path = _index(folder).get(name)
        if path:
            return path
    return None


def _data_files(cfg: dict) -> list[str]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or []
    files = list(files.values()) if isinstance(files, dict) else [files]
    return [f for v in files for f in ([v] if isinstance(v, str) else v)]


def _absolute(files, folder: Path):
    if isinstance(files, dict):
        return {k: _absolute(v, folder) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, folder) for v in files]
    return str((folder / files).resolve())


def reads_data_from_cwd(path: Path) -> bool:
    """Whether plain lm-eval would look for this YAML's data relative to the working directory (relative data_files
    and no loader of its own): the lm_eval command for it must then run from the YAML's folder."""
    cfg = _load_yaml(path, resolve_func=False)
    return "custom_dataset" not in cfg and any(not Path(f).is_absolute() for f in _data_files(cfg))


def task_config(name: str, include: list[str] | tuple[str, ...] = ()) -> dict | str:
    """A local task YAML as a config dict with data_files made absolute (relative to the task's YAML, which
    `datasets` would otherwise resolve against the CWD); a registry task name is passed through as the string."""
    path = local_task_path(name, include)
    if path is None:
        return name
    cfg = _load_yaml(path)
    if (cfg.get("dataset_kwargs") or {}).get("data_files"):
        cfg["dataset_kwargs"]["data_files"] = _absolute(cfg["dataset_kwargs"]["data_files"], path.parent)
    return cfg


def _code(obj) -> str:
    """A YAML `!function` in the fingerprint: its name and its module's source (not its memory address)."""
    if callable(obj):
        module = inspect.getmodule(obj)
        return f"function {obj.__qualname__} {stable_hash(inspect.getsource(module)) if module else ''}"
    return str(obj)


def task_fingerprint(names: list[str], include: list[str] | tuple[str, ...] = ()) -> str:
    """A hash of the task definitions and their data, so a changed eval set gives new cell ids. Where a task lives
    (tasks/, an include folder) and how its data files are read (`custom_dataset`) are not part of it: the same
    tasks give the same ids in any checkout, wherever it lives."""
    parts = []
    for name in sorted(names):
        path = local_task_path(name, include)
        if path is None:
            parts.append(("registry", name))
            continue
        cfg = _load_yaml(path)
        loader = cfg.pop("custom_dataset", None)
        files = _data_files(cfg)
        try:
            data = sorted(stable_hash((path.parent / p).read_bytes()) for p in files)
        except OSError as e:
            raise TaskNotFound(f"{path}: data file {e.filename}: {e.strerror}") from None
        if loader is not None and not files:  # data only its loader knows: its code stands for it
            data = [_code(loader)]
        parts.append((name, json.dumps(cfg, sort_keys=True, default=_code), data))
    return f"{stable_hash(parts):016x}"


def check_tasks(names: list[str], include: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names that are in no task folder nor in lm-eval's registry (indexing the registry costs ~6 s, so only then)."""
    missing = [n for n in names if local_task_path(n, include) is None]
    if not missing:
        return []
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    return [n for n in missing if n not in known]


def unknown_task_message(name: str, include: list[str] | tuple[str, ...] = ()) -> str:
    where = ", ".join(str(d) for d in task_dirs(include))
    return (f"unknown task {name!r}; expected a task YAML path, a task in {where} (add folders with eval.include / "
            f"--include), or an lm-eval registry task (`lm_eval ls tasks`)")


def resolve_tasks(m: Matrix) -> Matrix:
    """The matrix with its task YAML paths turned into names plus include folders; raises SpecError on a task
    found nowhere or a task data file that is missing."""
    from harness.spec import SpecError

    try:
        learn, include = split_refs(m.eval.learn, m.eval.include)
        forget, include = split_refs(m.eval.forget, include)
        m = dataclasses.replace(m, eval=dataclasses.replace(m.eval, learn=learn, forget=forget, include=include))
        missing = check_tasks(learn + forget, include)
        if missing:
            group = "learn" if missing[0] in learn else "forget"
            raise SpecError(f"eval.{group}: {unknown_task_message(missing[0], include)}")
        task_fingerprint(learn + forget, include)  # reads every data file: a missing one fails here
    except TaskNotFound as e:
        raise SpecError(f"eval: {e}") from None
    return m


@functools.cache
def _tasks(names: tuple[str, ...], include: tuple[str, ...]):
    """The lm-eval Task objects, built (datasets loaded, docs processed) once per process and reused by every cell
    a worker evaluates; each evaluation still builds its own requests from them."""
    from lm_eval.tasks import TaskManager

    registry = any(local_task_path(n, include) is None for n in names)
    manager = TaskManager(include_path=[str(d) for d in task_dirs(include)], include_defaults=registry)
    try:
        loaded = manager.load([task_config(n, include) for n in names])
    except KeyError as e:
        raise TaskNotFound(unknown_task_message(str(e).strip("'\""), include)) from None
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


def _run(model, tokenizer, names: list[str], group: str, chat: bool, include: tuple[str, ...], limit: int | None,
         batch_size: int, device: str, autocast) -> TaskScores:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              mixed_precision_dtype=autocast, max_length=getattr(tokenizer, "model_max_length", None))
    manager, tasks = _tasks(tuple(names), include)
    # with the chat template, few-shot examples are earlier user/assistant turns (lm_eval's --fewshot_as_multiturn,
    # which its CLI turns on with --apply_chat_template): the shape chat training gives the model
    res = simple_evaluate(lm, tasks=tasks, task_manager=manager, limit=limit, apply_chat_template=chat,
                          fewshot_as_multiturn=chat, log_samples=True, bootstrap_iters=100, random_seed=0, numpy_random_seed=0,
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


def _scoring_attention(model) -> str:
    """Switch the model (a peft model's base included) to ATTENTION for scoring; an architecture without it keeps
    the attention it was loaded with. Returns the one it will be scored with."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        core.set_attn_implementation(ATTENTION)
    except ValueError:  # transformers: this architecture does not support SDPA
        pass
    return core.config._attn_implementation


def evaluate(model, tokenizer, learn: list[str], forget: list[str], include: list[str] | tuple[str, ...] = (),
             limit: int | None = None, batch_size: int = 32, device: str = "cpu", autocast=None) -> TaskScores:
    """Score an in-memory model on the learn tasks (chat template on) and the forget tasks (raw LM). The model is
    switched to SDPA attention for it (ATTENTION) and left so."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    model.eval()
    out = TaskScores(attention=_scoring_attention(model))
    for names, group, chat in ((learn, "learn", True), (forget, "forget", False)):
        if names:
            part = _run(model, tokenizer, names, group, chat, tuple(include), limit, batch_size, device, autocast)
            out.metrics += part.metrics
            out.samples += part.samples
    return out


def write_task_data(tasks_dir: Path = TASKS_DIR) -> list[Path]:
    """(Re)generate tasks/data/*.jsonl from the skills world; deterministic, so the committed files never drift."""
    data = {**world.eval_items(), "world_mc": world.fact_mc_items(), "prose_bpb": corpus.heldout_prose()}
    paths = []
    for name, rows in data.items():
        path = tasks_dir / "data" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        paths.append(path)
    return paths


def evaluated_tasks(ev) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """What a matrix's `eval` section scores, and what its include folders hold: ([(task, group)], include
    folders), group learn, forget or include. Task YAML paths become names, as in resolve_tasks."""
    learn, include = split_refs(ev.learn, ev.include)
    forget, include = split_refs(ev.forget, include)
    out = [(t, "learn") for t in learn] + [(t, "forget") for t in forget]
    seen = set(learn) | set(forget)
    for folder in task_dirs(include)[:-1]:  # the include folders, not the built-in tasks/
        out += [(t, "include") for t in _index(folder) if t not in seen]
        seen |= set(_index(folder))
    return out, tuple(include)


def documents(names: list[str], include: tuple[str, ...] = ()) -> list[tuple[str, int, str]]:
    """Every evaluation document of the tasks as (task, doc id, text): the input as lm-eval renders it, then the
    target (a multiple-choice task's correct choice). Read through lm-eval's Task objects (~4 s for the built-in
    tasks), so cached in $HARNESS_CACHE/eval_docs by the tasks' fingerprint: their definitions and data."""
    from harness.core.cache import build_once, cache_dir

    entry = cache_dir("eval_docs") / f"{task_fingerprint(names, include)}.json"
    build_once(entry, lambda tmp: tmp.write_text(json.dumps(_documents(sorted(names), include))))
    return [tuple(d) for d in json.loads(entry.read_text())]


def _documents(names: list[str], include: tuple[str, ...]) -> list[list]:
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    _, tasks = _tasks(tuple(names), include)
    out = []
    for task in tasks:
        for i, doc in enumerate(task.eval_docs):
            target = task.doc_to_target(doc)
            if task.OUTPUT_TYPE == "multiple_choice" and isinstance(target, int):
                target = task.doc_to_choice(doc)[target]
            target = target[0] if isinstance(target, list) and target else target
            text = task.doc_to_text(doc) if task.OUTPUT_TYPE != "loglikelihood_rolling" else ""
            out.append([task.config.task, i, f"{text}\n{target}".strip()])
    return out
