"""Window bookkeeping without services: grace, lateness, where a restart resumes, rounding."""

from __future__ import annotations

from streams.windows import WINDOW_MS, PartitionWindows, committed_watermark, report_record


def test_late_within_grace_counts_and_past_it_does_not() -> None:
    windows = PartitionWindows(grace_ms=10_000)
    assert windows.add("c", 1_000, "impression", 10, offset=0)
    assert windows.add("c", WINDOW_MS + 9_000, "impression", 20, offset=1)  # watermark: 9 s into w1
    assert windows.add("c", 59_000, "click", 30, offset=2)  # w0 is still within its grace
    assert windows.close_due() == []
    assert windows.commit_offset(next_offset=3) == 0
    assert windows.add("c", WINDOW_MS + 10_000, "impression", 0, offset=3)  # grace over: w0 closes
    [w0] = windows.close_due()
    assert (w0.start, w0.impressions, w0.clicks, w0.spend_micros) == (0, 1, 1, 40)
    assert not windows.add("c", 59_500, "impression", 5, offset=4)  # too late
    assert windows.commit_offset(next_offset=5) == 1  # the first record of w1, still open


def test_wall_time_advance_closes_idle_windows() -> None:
    windows = PartitionWindows(grace_ms=10_000)
    windows.add("c", 5_000, "impression", 1, offset=7)
    windows.advance(WINDOW_MS + 10_000)
    assert [w.start for w in windows.close_due()] == [0]
    assert windows.commit_offset(next_offset=8) == 8


def test_report_record_rounds_ecpm_half_up_and_handles_no_impressions() -> None:
    record = report_record("c", 0, impressions=3, clicks=1, spend_micros=56_000)
    assert record["ecpm_micros"] == 18_666_667 and record["window_end"] == WINDOW_MS
    assert report_record("c", 0, impressions=0, clicks=2, spend_micros=9)["ctr"] == 0.0
    assert report_record("c", 0, impressions=2, clicks=0, spend_micros=1)["ecpm_micros"] == 500


def test_committed_watermark_tolerates_foreign_metadata() -> None:
    assert committed_watermark('{"wm": 123}') == 123
    assert committed_watermark("") == 0 and committed_watermark("not json") == 0 and committed_watermark("[1]") == 0
