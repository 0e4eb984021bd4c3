"""`harness check`'s comparison: a statistical regression gate between a baseline and a candidate, for CI.

Both sides are sets of finished runs with their per-example scores (stats.Scores): the baseline from a
JSON file written by `harness check --export-baseline`, a baseline saved in the database, a matrix or a run id; the
candidate from the database. A cell is (model, method, arm) over its seeds; the base model is the cell model/base.
For every cell in both and every metric (learn, forget and each task's primary metric) the check computes the change
candidate - baseline with the test of stats (stats.seed_test: example noise from a bootstrap over examples, seed
noise from the seeds' spread, Student's t for it; by default that spread pooled over the cells: policy seed_noise),
paired by example (the same examples are scored on both sides) and
by seed (the seeds both sides ran; Welch's two-sample form where they share none), and a p-value corrected over the
gated rows. A row is a regression only when its change is worse than the policy allows AND significant; improvements
are found the same way.

What the policy says must match (by default the model and the evaluated examples) makes a mismatch bad input (exit
2); everything else that changed (data, training config, harness version) is the change under test, and listed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pandas as pd

from harness.analysis import stats
from harness.analysis.check.policy import CheckError, Fail, GATE_WORDS, Policy
from harness.analysis.check.sides import Side, applies, boot_values, json_value, metric_list, plain
from harness.spec import SpecError, identity


def _sections(run: pd.Series) -> dict[str, object]:
    cfg = identity(json.loads(run["config"]))
    data = json_value(run["data"])
    return {"model": {"model_fingerprint": cfg.get("model_fingerprint")},
            "method": cfg.get("method_cfg"), "budget": cfg.get("budget"), "train": cfg.get("train"),
            "data": None if data is None else {"content_hash": data.get("content_hash"), "recipe": data.get("recipe")},
            "harness_version": run["harness_version"]}


def _diff(a, b, path: str) -> list[str]:
    """Leaf-level differences 'path: a -> b' between two JSON-like values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {_short(a)} -> {_short(b)}"]


def _short(v) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) > 24 else json.dumps(v)  # content hashes: 64 digits


def _eval_diffs(b: Side, c: Side) -> list[str]:
    out = []
    for t in sorted(set(b.scores.tasks) | set(c.scores.tasks)):
        tb, tc = b.scores.tasks.get(t), c.scores.tasks.get(t)
        if tb is None or tc is None:
            out.append(f"eval: task {t} only in the {'candidate' if tb is None else 'baseline'}")
            continue
        for what, vb, vc in (("group", tb.group, tc.group), ("metric", tb.metric, tc.metric),
                             ("examples", f"{len(tb.doc_ids)} examples {b.examples[t][:8]}",
                              f"{len(tc.doc_ids)} examples {c.examples[t][:8]}")):
            if vb != vc:
                out.append(f"eval: {t} {what}: {vb} -> {vc}")
    return out


def _one_line(items: list[str], limit: int = 6) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _mismatches(baseline: Side, candidate: Side, policy: Policy, cells: list[str]) -> tuple[list[str], list[str]]:
    """Differences between the sides: (those the policy requires to match, the rest: the change under test)."""
    diffs = [("eval", d) for d in _eval_diffs(baseline, candidate)]
    for cell in cells:
        sb, sc = (_sections(x.scores.runs[x.scores.runs["cell"] == cell].iloc[0]) for x in (baseline, candidate))
        diffs += [(key, f"{cell}: {d}") for key in sb if not (key == "data" and cell.endswith("/base"))
                  for d in _diff(sb[key], sc[key], key)]
    return [d for k, d in diffs if k in policy.match], [d for k, d in diffs if k not in policy.match]


@dataclass
class Result:
    baseline: str
    candidate: str
    rows: pd.DataFrame  # one per (cell, metric)
    notes: list[str]  # how each cell was paired, and the caveats
    changes: list[str]  # what differs between the sides without being required to match
    policy: Policy
    contaminated: list[str] = dataclasses.field(default_factory=list)  # over max_contaminated_rows: fails the check

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["gated"] & (self.rows["status"] == "regression")]

    @property
    def passed(self) -> bool:
        return self.regressions.empty and not self.contaminated

    @property
    def family(self) -> str:
        """The primary family (the gated rows) and its size, in one line."""
        g = self.rows[self.rows["gated"]]
        rest = len(self.rows) - len(g)
        dfs = sorted({int(x) for x in g["df"] if np.isfinite(x)})
        noise = (f"seed noise {'pooled over the cells' if self.policy.seed_noise == 'pooled' else 'per cell'} "
                 f"({'/'.join(map(str, dfs))} degrees of freedom)" if dfs else "seed noise not measured (one seed)")
        return (f"primary family: {len(g)} gated rows = metrics {', '.join(dict.fromkeys(g['metric']))} x "
                f"{g['cell'].nunique()} cells, {self.policy.correction}-corrected; {rest} other rows exploratory "
                f"(Benjamini-Hochberg, never gated); {noise}")


def _gated_metrics(policy: Policy, tasks: dict[str, stats.Task], fail: Fail) -> set[str]:
    names = set()
    for i, g in enumerate(policy.gate):
        if g == "all":
            names |= {"learn", "forget", *tasks}
        elif g in ("learn_tasks", "forget_tasks"):
            names |= {t for t, task in tasks.items() if task.group == g.split("_")[0]}
        elif g in ("learn", "forget") or g in tasks:
            names.add(g)
        else:
            fail(("gate", i), f"unknown metric {g!r}; expected one of {', '.join(GATE_WORDS)} or a task of the "
                              f"baseline ({', '.join(tasks)})")
    return names


def _gated_cells(policy: Policy, cells: list[str], fail: Fail) -> set[str]:
    if policy.cells == "all":
        return set(cells)
    out = set()
    for i, name in enumerate(policy.cells):
        hit = {c for c in cells if c == name or c.split("/", 1)[1] == name}
        if not hit:
            short = [c.split("/", 1)[1] for c in cells]
            fail(("cells", i), f"unknown cell {name!r}; expected all or one of {', '.join(short)}")
        out |= hit
    return out


def compare(baseline: Side, candidate: Side, policy: Policy = Policy(), fail: Fail | None = None) -> Result:
    """Every (cell, metric) of the baseline against the candidate. Raises CheckError for what must match and
    does not."""
    def plain_fail(path: tuple, msg: str) -> NoReturn:
        raise SpecError(f"policy: {'.'.join(map(str, path))}: {msg}")

    fail = fail or plain_fail
    opts = stats.Options(n_boot=policy.n_boot, alpha=policy.alpha)
    b, c = baseline.scores, candidate.scores
    common = [t for t in b.tasks if t in c.tasks and b.tasks[t].metric == c.tasks[t].metric]
    b_cells, c_cells = list(dict.fromkeys(b.runs["cell"])), list(dict.fromkeys(c.runs["cell"]))
    cells = [x for x in b_cells if x in c_cells]
    gated_cells = _gated_cells(policy, b_cells, fail)
    gated_metrics = _gated_metrics(policy, b.tasks, fail)
    problems, changes = _mismatches(baseline, candidate, policy, cells)
    problems += [f"cell {x} is in the baseline but not in the candidate" for x in b_cells
                 if x not in c_cells and x in gated_cells and not candidate.partial]
    problems += [f"gated metric {t}: not in the candidate" for t in sorted(gated_metrics)
                 if t in b.tasks and t not in common and "eval" not in policy.match]
    if problems:
        raise CheckError(f"{baseline.label} and {candidate.label} differ in what the policy requires to match "
                         f"(match: {', '.join(policy.match)}): {_one_line(problems)}")
    if not common:
        raise CheckError(f"no task in common: baseline {', '.join(b.tasks)}; candidate {', '.join(c.tasks)}")
    if not cells:
        raise CheckError(f"no cell in common: baseline {', '.join(b_cells)}; candidate {', '.join(c_cells)}")
    notes = [f"{cell}: in the candidate only (not compared)" for cell in c_cells if cell not in b_cells]
    boot = _resample(baseline, candidate, common, opts)
    if boot.unpaired_tasks:
        notes.append(f"examples differ in {', '.join(boot.unpaired_tasks)}: compared unpaired over those examples")
    pairs = {cell: _pair_seeds(cell, boot) for cell in cells}
    pooled = _pooled(boot, pairs) if policy.seed_noise == "pooled" else {}
    rows = []
    for cell, pair in pairs.items():
        notes += pair.notes
        rows += [{"cell": cell, "metric": m.name, "higher_is_better": m.higher_is_better,
                  "gated": cell in gated_cells and m.name in gated_metrics,
                  **_change(m, boot, pair, opts, policy, pooled.get(m.name)),
                  "n_examples": sum(len(boot.b.tasks[t].doc_ids) for t in m.coefs)}
                 for m in boot.metrics if applies(m, cell)]
    limit = policy.max_contaminated_rows
    dirty = [f"arm {arm}: {n} training rows overlap {task}" for arm, task, n in candidate.contamination
             if limit is not None and n > limit]
    return Result(baseline.label, candidate.label, _table(rows, policy), list(dict.fromkeys(notes)), changes, policy,
                  dirty)


@dataclass
class _Boot:
    """Both sides restricted to the tasks in common, with their bootstrap values per run (rows) and resample
    (columns); resamples are shared where the examples are the same (paired)."""
    b: stats.Scores
    c: stats.Scores
    metrics: list[stats.Metric]
    vb: dict[str, np.ndarray]
    vc: dict[str, np.ndarray]
    unpaired_tasks: list[str]


def _resample(baseline: Side, candidate: Side, common: list[str], opts: stats.Options) -> _Boot:
    b_s, c_s = (dataclasses.replace(x.scores, tasks={t: x.scores.tasks[t] for t in common})
                for x in (baseline, candidate))
    mets = metric_list(b_s)
    paired_ex = {t: baseline.examples[t] == candidate.examples[t] and
                 np.array_equal(b_s.tasks[t].doc_ids, c_s.tasks[t].doc_ids) for t in common}
    counts_b = {t: stats.example_counts(len(b_s.tasks[t].doc_ids), opts, t) for t in common}
    counts_c = {t: counts_b[t] if paired_ex[t] else stats.example_counts(len(c_s.tasks[t].doc_ids), opts,
                                                                          f"candidate:{t}") for t in common}
    return _Boot(b_s, c_s, mets, boot_values(b_s, counts_b, mets), boot_values(c_s, counts_c, mets),
                 [t for t in common if not paired_ex[t]])


@dataclass
class _Pairing:
    """How one cell's runs are matched: the rows of each side (by seed where the seeds are shared) and in words."""
    ib: np.ndarray
    ic: np.ndarray
    by_seed: bool  # paired by seed (one sample of per-seed differences), else two groups of seeds (Welch)
    pairing: str
    notes: list[str]


def _pair_seeds(cell: str, boot: _Boot) -> _Pairing:
    gb = boot.b.runs[boot.b.runs["cell"] == cell].sort_values("seed")
    gc = boot.c.runs[boot.c.runs["cell"] == cell].sort_values("seed")
    seeds_b, seeds_c = [plain(x) for x in gb["seed"]], [plain(x) for x in gc["seed"]]
    both = [x for x in seeds_b if x in seeds_c]
    notes = []
    one_seed = [f"{cell}: one seed: the interval counts example noise only, not seed-to-seed noise (the allowance "
                f"must absorb that; run more seeds for a test that counts it)"]
    if not both:  # no seed in common: each side's seeds a group of their own
        return _Pairing(gb["row"].to_numpy(), gc["row"].to_numpy(), False,
                        "examples" if not boot.unpaired_tasks else "unpaired",
                        [f"{cell}: seeds differ (baseline {seeds_b}, candidate {seeds_c}): compared unpaired over "
                         f"seeds"] + (one_seed if min(len(gb), len(gc)) == 1 and not cell.endswith("/base") else []))
    # paired by seed: the same seeds on both sides, in the same order (the base model: seed None)
    row_b, row_c = dict(zip(seeds_b, gb["row"])), dict(zip(seeds_c, gc["row"]))
    ib, ic = np.array([row_b[x] for x in both]), np.array([row_c[x] for x in both])
    left = sorted(set(seeds_b + seeds_c) - set(both), key=str)
    if left:
        notes.append(f"{cell}: paired on seeds {both}; seeds {left} ran on one side only and are left out")
    if len(both) == 1 and not cell.endswith("/base"):
        notes += one_seed
    return _Pairing(ib, ic, True, "seeds, examples" if not boot.unpaired_tasks else "seeds", notes)


def _pooled(boot: _Boot, pairs: dict[str, _Pairing]) -> dict[str, tuple[float, int]]:
    """metric -> the seed noise of one seed's change candidate - baseline (variance, df), pooled over the trained
    cells paired by seed (stats.pooled_seed_variance: the changes' spread around their cell's mean change). A cell's
    own seed effects cancel in its change; what is left is assumed alike across cells."""
    by_seed = {c: p for c, p in pairs.items() if p.by_seed and not c.endswith("/base")}
    if not by_seed:
        return {}
    cell = np.concatenate([[c] * len(p.ib) for c, p in by_seed.items()])
    ib, ic = (np.concatenate([getattr(p, k) for p in by_seed.values()]) for k in ("ib", "ic"))
    return {m.name: stats.pooled_seed_variance(boot.vc[m.name][ic, 0] - boot.vb[m.name][ib, 0], cell)
            for m in boot.metrics}


def _change(m: stats.Metric, boot: _Boot, pair: _Pairing, opts: stats.Options, policy: Policy,
            pooled: tuple[float, int] | None) -> dict:
    """One metric of one cell: candidate - baseline with its interval and p-value, and the allowance."""
    vb, vc, ib, ic = boot.vb[m.name], boot.vc[m.name], pair.ib, pair.ic
    w = stats.seed_test(vc[ic] - vb[ib], confidence=opts.confidence, pooled=pooled) if pair.by_seed else \
        stats.seed_test(vc[ic], vb[ib], opts.confidence)
    base_value = float(np.mean(vb[ib, 0]))
    return {"baseline": base_value, "candidate": float(np.mean(vc[ic, 0])),
            "change": w["diff"], "ci_low": w["ci_low"], "ci_high": w["ci_high"], "df": w["df"],
            "p_value": w["p_value"], "allowed": _allowed(policy, m, base_value), "paired": pair.pairing}


def _table(rows: list[dict], policy: Policy) -> pd.DataFrame:
    """The rows with their p-values corrected and their status."""
    df = pd.DataFrame(rows)
    df["p_adjusted"] = np.nan
    # the gated rows are the primary family (the policy's correction); the rows shown for information are
    # exploratory, with a false discovery rate (Benjamini-Hochberg), like the report's
    for gated, method in ((True, {"holm": "holm", "bh": "fdr_bh"}.get(policy.correction)), (False, "fdr_bh")):
        sel = df["gated"] == gated
        if sel.any():
            df.loc[sel, "p_adjusted"] = df.loc[sel, "p_value"] if method is None else \
                stats.adjust(df.loc[sel, "p_value"], method)
    df["status"] = [_status(r, policy.alpha) for r in df.itertuples()]
    return df


def _allowed(policy: Policy, m: stats.Metric, baseline: float) -> float:
    """How far the metric may move the wrong way: forget has its own allowance; otherwise the larger of the absolute
    and the relative allowance (a missing one counts as 0)."""
    if m.name == "forget":
        return policy.forget_max_growth or 0.0
    a = policy.max_drop
    return max(a.abs or 0.0, (a.rel or 0.0) * abs(baseline) if np.isfinite(baseline) else 0.0)


def _status(r, alpha: float) -> str:
    """regression / improved: beyond the allowance AND significant; otherwise why not."""
    if not np.isfinite(r.change):
        return "n/a"
    if r.change == 0:
        return "no change"
    worse = (r.change < 0) == r.higher_is_better
    if abs(r.change) <= r.allowed:
        return "within allowance"
    if not r.p_adjusted < alpha:
        return "not significant"
    return "regression" if worse else "improved"
