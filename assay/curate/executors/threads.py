"""Work on other threads: an iterator produced ahead of its consumer, a coroutine run to
completion from any thread."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer (an
    exception it raises is raised here). Closing this generator, or dropping it, stops the
    thread after the item it is making."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(max(1, depth))
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="assay-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if more:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        thread.join()


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, also from inside a running event loop (Jupyter, async apps).

    There the loop's thread must not block on itself, so the run gets its own thread and loop.
    """
    import asyncio  # on first use: importing it costs ~30 ms

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="assay-run") as pool:
        return pool.submit(asyncio.run, coro).result()
