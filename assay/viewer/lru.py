"""A small thread-safe least-recently-used cache (the viewer's schemas, totals, matches)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class LRU:
    """Keeps the `size` most recently used entries; `get` of a missing key is None."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
