"""The wheel: built from the source, installed into a fresh venv, it scores a built-in task from an unrelated folder.

A fresh venv with every dependency costs ~60 s and ~2 GB; this one reuses the test interpreter's packages through a
.pth file (`python -m venv --without-pip` + one line), and pip installs only the harness wheel into it (--no-deps;
--force-reinstall, as the shared packages include the editable harness, which pip leaves alone: it is outside this
venv).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_evaluates_from_an_unrelated_folder(tmp_path, micro_base):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "harness", src / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("harness-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # dependencies, not their .pth files
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", "--force-reinstall", str(wheel)], check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import harness; print(harness.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the installed wheel, not the source tree
    res = subprocess.run([str(venv / "bin" / "harness"), "eval", "micro", "--tasks", "skills_arith", "--forget",
                          "world_mc", "--limit", "4", "--results", "r"], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skills_arith" in res.stdout and "world_mc" in res.stdout
    assert (elsewhere / "r" / "harness.duckdb").exists()
