"""harness/core/atomic.py: a target is complete or absent; no temporary file outlives its block."""

from pathlib import Path

import pytest

from harness.core.atomic import atomic_dir, atomic_file, temp_path
from harness.core.fmt import number


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_appears_complete_and_nothing_else_stays(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_file(target) as tmp:
        tmp.write_text("new")
        assert not target.exists() and tmp.parent == target.parent and tmp.name.startswith(".out.txt.tmp-")
    assert target.read_text() == "new" and _names(target.parent) == ["out.txt"]


def test_a_failure_leaves_no_target_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ZeroDivisionError), atomic_file(target) as tmp:
        tmp.write_text("half")
        1 / 0
    assert _names(tmp_path) == []


def test_a_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_file(target) as tmp:
        tmp.write_text("half")
        1 / 0
    assert target.read_text() == "old" and _names(tmp_path) == ["out.txt"]


def test_a_folder_replaces_an_earlier_one(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "stale").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "result.json").write_text("{}")
    assert _names(target) == ["result.json"] and _names(tmp_path) == ["run"]


def test_a_failed_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "run") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError
    assert _names(tmp_path) == []


def test_keep_existing_keeps_a_folder_another_process_finished_first(tmp_path):
    target = tmp_path / "data"
    with atomic_dir(target, keep_existing=True) as tmp:
        (tmp / "card.json").write_text("ours")
        target.mkdir()  # the other process renames its copy into place meanwhile
        (target / "card.json").write_text("theirs")
    assert (target / "card.json").read_text() == "theirs" and _names(tmp_path) == ["data"]


def test_a_leftover_of_a_killed_writer_with_this_pid_is_cleared(tmp_path):
    target = tmp_path / "run"
    temp_path(target).mkdir()
    (temp_path(target) / "half").write_text("x")
    with atomic_dir(target) as tmp:
        assert _names(tmp) == []
    assert _names(tmp_path) == ["run"]


@pytest.mark.parametrize("args, text", [((None,), "–"), ((float("nan"),), "–"), ((float("inf"),), "–"),
                                        ((0.12345,), "0.123"), ((0.5, 1), "0.5"), ((12345.6,), "12,346"),
                                        ((99.5, 3, 100, 1), "99.500"), ((1234.56, 3, 100, 1), "1,234.6")])
def test_number(args, text):
    assert number(*args) == text
