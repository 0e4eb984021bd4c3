import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# the shared cache (bases, converted models, embeddings) of this test session: never the user's ~/.cache
os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-test-cache-")

CI_MATRIX = Path(__file__).parent / "matrices" / "ci.yaml"
# fixtures that run a whole matrix through the CLI (minutes on 2 cores): every test using one is slow
MATRIX_FIXTURES = {"ci_run", "check_runs"}


def pytest_collection_modifyitems(items):
    for item in items:
        if MATRIX_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def fresh_results(ci_run, tmp_path: Path) -> Path:
    """A results folder with the data sets of the CI run but no cells (the micro base is in the shared cache)."""
    results = tmp_path / "results"
    shutil.copytree(ci_run[0] / "data", results / "data")
    return results


@pytest.fixture(scope="session")
def micro_base() -> Path:
    """The micro base model, built once per test session (~5 s) into the session's shared cache."""
    from harness.models.pretrain import PRESETS, build_base

    return build_base(PRESETS["micro"], log=lambda *a: None)


@pytest.fixture
def results(tmp_path, micro_base) -> Path:
    """A fresh results folder (the micro base is already in the shared cache)."""
    return tmp_path / "results"


@pytest.fixture(scope="session")
def micro_model(micro_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(micro_base, attn_implementation="eager"), \
        AutoTokenizer.from_pretrained(micro_base)


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory, micro_base):
    """The CI matrix run once through the CLI, then its report (the README's queries read the stat_* tables too);
    later tests (matrix, report) read its database."""
    from typer.testing import CliRunner

    from harness.cli import app

    results = tmp_path_factory.mktemp("run") / "results"
    res = CliRunner().invoke(app, ["matrix", "run", str(CI_MATRIX), "--results", str(results)])
    assert res.exit_code == 0, res.output
    rep = CliRunner().invoke(app, ["report", "ci", "--results", str(results), "-o", str(results / "ci.html")])
    assert rep.exit_code == 0, rep.output
    return results, res.output
