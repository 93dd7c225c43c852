"""The rate limits' shared table: one bucket per key name, whichever process takes from it."""

from __future__ import annotations

import multiprocessing

import pytest

from services.gatekeeper.keys import SharedBuckets


def test_names_that_share_a_slot_keep_buckets_of_their_own():
    table = SharedBuckets(slots=2)  # three names, two slots: every name collides
    assert [table.take("a", 1.0, 2, 0.0) for _ in range(2)] == [0.0, 0.0]
    assert table.take("a", 1.0, 2, 0.0) > 0
    assert table.take("b", 1.0, 1, 0.0) == 0.0  # b has its own, full
    assert table.take("b", 1.0, 1, 0.0) > 0
    assert table.take("a", 1.0, 2, 0.0) > 0      # a is still empty


def test_a_refilled_bucket_gives_its_slot_to_a_new_name_and_nothing_changes():
    table = SharedBuckets(slots=2)
    table.take("a", 10.0, 1, 0.0)
    table.take("b", 10.0, 1, 0.0)
    # Both slots hold empty buckets: a third name finds none free, and gets one of the
    # process's own (logged), until a bucket has refilled.
    assert table.take("c", 10.0, 1, 0.0) == 0.0
    assert table.take("c", 10.0, 1, 0.0) > 0
    # 0.1 s on, a and b are full again: c takes over a slot, and a, b, c all still work.
    assert table.take("c", 10.0, 1, 0.2) == 0.0
    assert table.take("a", 10.0, 1, 0.2) == 0.0
    assert table.take("c", 10.0, 1, 0.2) > 0


def test_a_bucket_follows_the_keys_rate_and_burst_as_they_are_now():
    table = SharedBuckets()
    for _ in range(5):
        assert table.take("k", 1.0, 5, 0.0) == 0.0
    assert table.take("k", 1.0, 5, 0.0) == pytest.approx(1.0)
    # The key was reloaded with another rate and burst: a second later its bucket holds the
    # new burst (4 tokens came in, 2 are kept).
    assert [table.take("k", 4.0, 2, 1.0) for _ in range(2)] == [0.0, 0.0]
    assert table.take("k", 4.0, 2, 1.0) == pytest.approx(0.25)
    assert table.take("k", 4.0, 2, 100.0) == 0.0  # refills to the new burst, not the old
    assert table.take("k", 4.0, 2, 100.0) == 0.0
    assert table.take("k", 4.0, 2, 100.0) > 0


def _take_all(table: SharedBuckets, granted) -> None:
    count = 0
    for _ in range(50):
        if table.take("shared", 0.001, 20, 0.0) == 0.0:
            count += 1
    granted.put(count)


def test_forked_processes_take_from_the_same_bucket():
    table = SharedBuckets()
    context = multiprocessing.get_context("fork")
    granted = context.Queue()
    processes = [context.Process(target=_take_all, args=(table, granted)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert sum(granted.get(timeout=5) for _ in processes) == 20
    assert table.take("shared", 0.001, 20, 0.0) > 0
