"""`harness check`: a statistical regression gate between a baseline and a candidate, for CI.

policy (what may move how far) -> sides (baseline and candidate: runs and per-example scores) -> compare (paired
bootstrap per cell and metric) -> output (table, markdown, JUnit XML, the database).
"""

from harness.analysis.check.compare import Result, compare
from harness.analysis.check.output import COLUMNS, junit, markdown, record, table, verdict, write_text
from harness.analysis.check.policy import DEFAULT_POLICY, CheckError, Policy, load_policy
from harness.analysis.check.sides import FORMAT, Side, from_db, from_json, load_side, save_baseline, to_json

__all__ = ["COLUMNS", "DEFAULT_POLICY", "FORMAT", "CheckError", "Policy", "Result", "Side", "compare", "from_db",
           "from_json", "junit", "load_policy", "load_side", "markdown", "record", "save_baseline", "table", "to_json",
           "verdict", "write_text"]
