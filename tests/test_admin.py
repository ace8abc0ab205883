"""The dashboard's pure parts: p95 from latency buckets, SVG charts, counted events."""

from __future__ import annotations

import logging

from gateway.admin.charts import sparkline
from gateway.admin.history import KEPT, Sample, _Series, p95
from gateway.metrics.events import EventCounts
from gateway.metrics.requests import BUCKETS


def test_p95_is_the_bound_of_the_bucket_holding_it() -> None:
    assert p95([0] * (len(BUCKETS) + 1)) is None
    assert p95([100, 0, 0, 0, 0, 0, 0, 0]) == BUCKETS[0]
    assert p95([94, 0, 6, 0, 0, 0, 0, 0]) == BUCKETS[2]  # 94 % in the first: not enough
    assert p95([0, 0, 0, 0, 0, 0, 0, 1]) == float("inf")


def test_sparkline_draws_known_minutes_and_escapes_its_label() -> None:
    chart = sparkline([None, 1, 3, None, 2], label='<requests> "a" minute')
    assert chart.count("<polyline") == 2  # a gap where a minute is missing
    assert chart.count("<circle") == 1
    assert 'aria-label="&lt;requests&gt; &#34;a&#34; minute: last 2, highest 3"' in chart
    assert ">2</text>" in chart
    empty = sparkline([None, None], label="p95", unit=" ms")
    assert "<polyline" not in empty and ">-</text>" in empty


def test_events_are_counted_by_name() -> None:
    counts = EventCounts()
    log = logging.getLogger("test_admin")
    log.addHandler(counts)
    log.setLevel(logging.INFO)
    try:
        log.info("signed_in", extra={"email": "ann@example.com"})
        log.info("sign_in_failed", extra={"email": "ann@example.com"})
        log.info("upload_imported", extra={"tenant": "alice", "rows": 10, "bytes": 300,
                                           "duration_s": 0.5})
        log.warning("upload_failed", extra={"tenant": "alice", "reason": "bad"})
        log.error("reload_failed", extra={"failed": {"carol": "exited"}})
        log.info("tenant_started", extra={"tenant": "alice"})
    finally:
        log.removeHandler(counts)
    assert counts.counts == {("sign_ins", "ok"): 1, ("sign_ins", "failed"): 1,
                             ("uploads", "ok"): 1, ("uploads", "failed"): 1,
                             ("reloads", "failed"): 1}
    assert counts.uploads == {"alice": [10.0, 300.0, 0.5]}
    assert counts.upload_results == {("alice", "ok"): 1, ("alice", "failed"): 1}
    assert [r["failed"] for r in counts.reloads] == [{"carol": "exited"}]
    assert set(counts.last_upload) == {"alice"}


def test_a_day_of_samples_is_kept_compactly() -> None:
    series = _Series()
    for minute in range(KEPT + 5):
        series.append(Sample(minute, None if minute % 2 else 0.025, 50 * 1024 * 1024))
    assert len(series.requests) == len(series.p95_s) == len(series.rss_kb) == KEPT
    assert series.last(2) == [Sample(KEPT + 3, None, 50 * 1024 * 1024),
                              Sample(KEPT + 4, 0.02500000037252903, 50 * 1024 * 1024)]
    assert series.requests.itemsize + series.p95_s.itemsize + series.rss_kb.itemsize == 12
