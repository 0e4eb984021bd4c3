"""Progress lines (harness.core.progress) for long steps: rate and time left, nothing for tiny totals."""

from harness.core.progress import progress


def test_progress_lines_show_rate_and_time_left(capsys):
    with progress("embedding", total=100, unit="texts", every=0) as advance:
        advance(40)
        advance(60)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("embedding: 40/100 texts, ") and "texts/s" in lines[0] and "left" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("embedding: 100/100 texts") and "left" not in lines[1]
    with progress("tiny", total=3, every=0) as advance:  # too small to show
        advance(3)
    assert capsys.readouterr().err == ""
