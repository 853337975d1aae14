"""`read_ahead`: the executor decodes the next batches in a background thread; items keep
their order, the producer's error reaches the consumer, and closing stops the thread."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from assay.curate.executors.threads import read_ahead


def test_items_keep_their_order_and_come_from_another_thread() -> None:
    made_in: set[int] = set()

    def numbers() -> Iterator[int]:
        for i in range(100):
            made_in.add(threading.get_ident())
            yield i

    assert list(read_ahead(numbers(), depth=3)) == list(range(100))
    assert made_in and threading.get_ident() not in made_in


def test_an_error_of_the_producer_is_raised_to_the_consumer_after_the_items_before() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad row 3")

    got: list[int] = []
    with pytest.raises(ValueError, match="bad row 3"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]


def test_closing_stops_the_producer_and_closes_its_source() -> None:
    closed = threading.Event()
    made: list[int] = []

    def endless() -> Iterator[int]:
        try:
            for i in itertools.count():
                made.append(i)
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    stream = read_ahead(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.is_set()  # the source generator was closed by its own thread
    assert len(made) <= 5 + 2 + 2  # it ran at most `depth` (and one in hand) ahead
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
