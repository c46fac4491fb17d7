"""The counts a process keeps of its own work: buckets by upper bound, sums, bytes by
direction, and nothing lost to threads counting at once."""

from __future__ import annotations

import threading

from loft.telemetry import BUCKETS, Meter


def test_observations_land_in_the_bucket_of_their_upper_bound() -> None:
    m = Meter()
    m.observe("read", BUCKETS[0], "read", 4096)  # on a bound: that bucket
    m.observe("read", BUCKETS[0] * 1.5, "read", 4096)
    m.observe("read", 999.0)  # above every bound: the last bucket
    m.moved("read", 10)
    (read,) = m.report().latency
    assert read.counts[0] == 1 and read.counts[1] == 1 and read.counts[-1] == 1
    assert read.count == 3 and read.sum == BUCKETS[0] * 2.5 + 999.0
    assert [(b.direction, b.bytes) for b in m.report().bytes] == [("read", 8202)]


def test_many_observations_at_once_count_each() -> None:
    m = Meter()
    m.observe("read", BUCKETS[1], "read", 3 * 4096, count=3)  # one batch of three
    m.observe("read", BUCKETS[0], "read", 4096)
    (read,) = m.report().latency
    assert read.counts[:2] == [1, 3] and read.count == 4
    assert read.sum == BUCKETS[1] * 3 + BUCKETS[0]
    assert [(b.direction, b.bytes) for b in m.report().bytes] == [("read", 4 * 4096)]


def test_threads_counting_at_once_lose_nothing() -> None:
    m = Meter()

    def work() -> None:
        for _ in range(5000):
            m.observe("put", 0.001, "up", 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (put,) = m.report().latency
    assert put.count == 20_000 and m.report().bytes[0].bytes == 20_000
