"""`harness check`'s output: the table (terminal and markdown), JUnit XML, and the result kept in the database."""

from __future__ import annotations

import dataclasses
import datetime
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from harness import store
from harness.analysis.check.compare import Result
from harness.analysis.check.policy import Policy
from harness.core.atomic import atomic_file
from harness.core.fmt import number
from harness.core.ids import stable_hash


COLUMNS = ["cell", "metric", "gate", "baseline", "candidate", "change [95% CI]", "allowed", "p (adj.)", "verdict"]


def _num(v: float) -> str:
    return number(v, big=100, big_digits=1)


def table(res: Result) -> list[list[str]]:
    out = []
    for r in res.rows.itertuples():
        sign = "-" if r.higher_is_better else "+"
        out.append([r.cell, r.metric, "yes" if r.gated else "",
                    _num(r.baseline), _num(r.candidate),
                    f"{r.change:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", f"{sign}{_num(r.allowed)}",
                    _p(r.p_adjusted), _shown_status(r)])
    return out


def _p(p: float) -> str:
    return "–" if not np.isfinite(p) else "<0.0001" if p < 1e-4 else f"{p:.2g}"


def _shown_status(r) -> str:
    if r.status != "regression":
        return r.status
    return "REGRESSION" if r.gated else "regression (not gated)"


def verdict(res: Result) -> str:
    reg, rows = res.regressions, res.rows
    gated = int(rows["gated"].sum())
    better = rows[rows["status"] == "improved"]
    tail = f"; {len(better)} improved ({', '.join(better['cell'] + ' ' + better['metric'])})" if len(better) else ""
    if res.contaminated:
        tail += (f"; contaminated (max_contaminated_rows {res.policy.max_contaminated_rows}): "
                 f"{', '.join(res.contaminated)}")
    if res.passed:
        return f"PASS: no regression in {gated} gated metrics{tail}"
    if res.regressions.empty:
        return f"FAIL: no regression in {gated} gated metrics{tail}"
    which = ", ".join(f"{r.cell} {r.metric} {r.change:+.3f} (p {_p(r.p_adjusted).replace('<', '< ')})"
                      for r in reg.itertuples())
    return f"FAIL: {len(reg)} of {gated} gated metrics regressed: {which}{tail}"


def markdown(res: Result) -> str:
    """The result for a CI step summary (GitHub-flavoured markdown)."""
    def cell(v: str) -> str:
        return v.replace("|", "\\|")

    lines = [f"### harness check: {verdict(res)}", "", f"{cell(res.baseline)} vs {cell(res.candidate)}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table(res):
        r[-1] = f"**{r[-1]}**" if r[-1] == "REGRESSION" else r[-1]
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    lines += [""] + [f"- {cell(n)}" for n in res.notes + [f"changed since the baseline: {c}" for c in res.changes]]
    lines.append(_policy_line(res.policy))
    lines.append(f"- {res.family}")
    return "\n".join(lines) + "\n"


def _policy_line(p: Policy) -> str:
    return (f"A row is a regression when it moves the wrong way by more than `allowed` AND its p-value (a t test over "
            f"seeds, paired by seed and example), {p.correction}-corrected over the gated rows, is below {p.alpha}.")


def junit(res: Result) -> str:
    """JUnit XML: one testcase per gated (cell, metric), a <failure> for each regression."""
    gated = res.rows[res.rows["gated"]]
    failures = int((gated["status"] == "regression").sum())
    suite = ET.Element("testsuite", name="harness check", tests=str(len(gated)), failures=str(failures),
                       errors="0", skipped="0",
                       timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    props = ET.SubElement(suite, "properties")
    for k, v in (("baseline", res.baseline), ("candidate", res.candidate)):
        ET.SubElement(props, "property", name=k, value=v)
    for r in gated.itertuples():
        case = ET.SubElement(suite, "testcase", classname=f"harness.check.{r.cell}", name=r.metric)
        text = (f"{r.metric} of {r.cell}: baseline {_num(r.baseline)}, candidate {_num(r.candidate)}, change "
                f"{r.change:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}], allowed {_num(r.allowed)}, "
                f"p={r.p_adjusted:.3g} ({res.policy.correction}); paired by {r.paired}; {r.status}")
        if r.status == "regression":
            ET.SubElement(case, "failure", message=f"{r.metric} regressed by {r.change:+.4f}",
                          type="regression").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader sees the old file or the new one, never half of it."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def record(db: Path, res: Result) -> str:
    """Keep the result in check_results (one transaction); returns the check id."""
    now = datetime.datetime.now(datetime.timezone.utc)
    check_id = f"{stable_hash(res.baseline, res.candidate, now.isoformat()):016x}"[:12]
    df = res.rows[["cell", "metric", "gated", "baseline", "candidate", "change", "ci_low", "ci_high", "df", "allowed",
                   "p_value", "p_adjusted", "paired", "status"]].rename(
        columns={"baseline": "baseline_value", "candidate": "candidate_value"})
    df.insert(0, "check_id", check_id)
    df.insert(1, "checked_at", now.replace(tzinfo=None))
    df.insert(2, "baseline", res.baseline)
    df.insert(3, "candidate", res.candidate)
    df["policy"] = json.dumps(dataclasses.asdict(res.policy))
    with store.writer(db) as con:
        con.register("_check", df)
        con.execute("INSERT INTO check_results BY NAME SELECT * FROM _check")
        con.unregister("_check")
    return check_id
