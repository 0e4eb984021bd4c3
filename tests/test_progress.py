"""Progress lines: long steps say how far they are, short ones say nothing."""

from harness.core import progress


def test_progress_prints_rate_and_eta_only_after_the_interval(monkeypatch):
    clock = iter([0.0, 5.0, 12.0, 13.0, 30.0])  # the first update (t 5) sets the pace's origin
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    lines = []
    p = progress.Progress("distill", 100, "prompts", lines.append)  # t0 = 0
    p.update(10)  # t 5: within the interval
    p.update(20)  # t 12: a line
    p.update(10)  # t 13: too soon after the last
    p.update(60)  # t 30: the last item: the step's own summary follows, not a progress line
    assert lines == ["distill: 30/100 prompts (2.86/s), 12s, ETA 24s"]  # 20 more in 7 s; 70 left
