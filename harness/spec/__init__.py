"""The matrix spec: YAML -> typed dataclasses (`matrix`) -> cells, each with a content-addressed id (`cells`).

`validate` reads YAML with line numbers and checks it against the dataclasses (SpecError names the file, the line and
the key path, and what was expected); `load` turns a file or preset into a checked Matrix with its paths resolved.
"""

from harness.spec.cells import ADDED_KEYS, NOT_IN_ID, BaseEval, Cell, base_eval, content_id, expand, identity
from harness.spec.load import DEMO_MATRIX, PRESETS_DIR, load_matrix, parse_matrix, presets, resolve_paths, size_label
from harness.spec.matrix import (CONTRASTS, Analysis, Arm, Budget, Eval, Matrix, Method, Run, Train,
                                 matched_description)
from harness.spec.validate import SpecError, convert, read_yaml

__all__ = ["ADDED_KEYS", "NOT_IN_ID", "BaseEval", "Cell", "base_eval", "content_id", "expand", "identity",
           "DEMO_MATRIX", "PRESETS_DIR", "load_matrix", "parse_matrix", "presets", "resolve_paths", "size_label",
           "CONTRASTS", "Analysis", "Arm", "Budget", "Eval", "Matrix", "Method", "Run", "Train", "matched_description",
           "SpecError", "convert", "read_yaml"]
