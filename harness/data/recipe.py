"""Data arms' recipes: a source and curation steps from a matrix or a recipe file -> a Recipe with a content id.

A data set's id is a hash of its resolved source and steps (not of the arm's name), so arms and matrices that ask
for the same data share one build under results/data/<id>/. Sources are validated here and loaded by sources.py;
a scalar step value is the step's main parameter, and a model named by a step joins the id by its fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import models
from harness.data import curate, world
from harness.spec import Arm, Matrix, SpecError, content_id, resolve_paths


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


def _step(raw, arm: str, i: int) -> tuple[str, dict]:
    """A recipe step (curate.parse_step checks it); a model's fingerprint joins the parameters (a changed teacher
    gives a new data set id)."""
    where = f"arms.{arm}.steps.{i}"
    try:
        name, params = curate.parse_step(raw)
    except curate.StepError as e:
        raise SpecError(f"{'.'.join(map(str, (where, *e.path)))}: {e}") from None
    for key in curate.MODEL_KEYS:
        if key in params:
            try:
                params = {**params, f"{key}_fingerprint": models.resolve(str(params[key])).fingerprint}
            except models.ModelError as e:
                raise SpecError(f"{where}.{name}.{key}: {e}") from None
    return name, params


NOT_IN_ID = ("like", "include")  # an arm's name and where tasks live: what the data is stands in for them


def _against(params: dict, m: Matrix, where: str) -> dict:
    """decontaminate's tasks: the matrix's evaluated tasks (`against: eval`: learn, forget and every task of the
    include folders) or those listed. Their fingerprint (definitions and data) joins the data set's id, so a
    changed evaluation set gives a new data set; the include folders (where the tasks live) do not."""
    from harness.eval import tasks  # data reads the evaluation's documents here, and in the step

    against = params.get("against", "eval")
    try:
        if against == "eval":
            found, include = tasks.evaluated_tasks(m.eval)
            names = [t for t, _ in found]
        else:
            names, include = tasks.split_refs(against, m.eval.include)
        missing = tasks.check_tasks(names, include)
        if missing:
            raise SpecError(f"{where}: {tasks.unknown_task_message(missing[0], include)}")
        fingerprint = tasks.task_fingerprint(names, include)
    except tasks.TaskNotFound as e:
        raise SpecError(f"{where}: {e}") from None
    return {**params, "tasks": names, "tasks_fingerprint": fingerprint, "include": list(include)}


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
            if name == "decontaminate":
                params = _against(params, m, f"arms.{arm}.steps.{i}.decontaminate.against")
            if "like" in params:
                if params["like"] not in m.arms:
                    raise SpecError(f"arms.{arm}.steps.{i}.like: unknown arm {params['like']!r}; "
                                    f"expected one of {', '.join(m.arms)}")
                params = {**params, "like_dataset": resolve(params["like"]).id}
            steps.append((name, params))
        seed = source.get("seed", 0)
        # the data's content (sha256 / fingerprint), not where it lies, identifies a user file
        rid = content_id({"source": {k: v for k, v in source.items() if k != "path"},
                          "steps": [[n, {k: v for k, v in p.items() if k not in NOT_IN_ID}] for n, p in steps]})
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
    try:
        return resolve_recipes(m, skip_bad), arm
    except SpecError as e:  # name the file; a recipe file's keys are read from its top, not from arms.ARM
        where = str(e) if "arms" in raw else str(e).removeprefix(f"arms.{arm}.")
        raise SpecError(f"{path}: {where}") from None
