"""The shared cache: one entry per content hash, built once even when processes race for it."""

import os
import subprocess
import sys
from pathlib import Path

from harness.core import cache

RACE = """
import sys, time
from pathlib import Path
from harness.core.cache import build_once

def build(tmp):
    tmp.mkdir()
    with open(sys.argv[2], "a") as log:  # one line per build that really ran
        log.write("built\\n")
    time.sleep(1.0)  # long enough that the other process arrives while this one builds
    (tmp / "done").write_text(sys.argv[3])

entry = build_once(Path(sys.argv[1]), build, done=lambda p: (p / "done").exists())
print((entry / "done").read_text())
"""


def test_cache_dir_follows_harness_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir("bases") == tmp_path / "c" / "bases" and (tmp_path / "c" / "bases").is_dir()
    monkeypatch.delenv("HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.root() == tmp_path / "xdg" / "harness"


def test_two_processes_build_one_entry_once(tmp_path):
    entry, log = tmp_path / "entry", tmp_path / "builds.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(entry), str(log), name], stdout=subprocess.PIPE,
                              text=True, env=env) for name in ("first", "second")]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert log.read_text() == "built\n"  # built once
    assert outs[0] == outs[1] in ("first", "second")  # both got the one entry
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock", "builds.log", "entry"]  # no temp left


def test_a_killed_builder_leaves_nothing_the_next_build_trips_on(tmp_path):
    entry = tmp_path / "e"
    stale = tmp_path / ".e.tmp-99999"
    stale.mkdir()
    (stale / "half").write_text("x")

    def build(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "done").write_text("ok")

    assert cache.build_once(entry, build, done=lambda p: (p / "done").exists()) == entry
    assert (entry / "done").read_text() == "ok" and not stale.exists()
    assert cache.build_once(entry, lambda tmp: 1 / 0, done=lambda p: (p / "done").exists()) == entry  # reused
