"""A process-wide on / off switch whose context manager restores the previous state on exit (the weight cache's
switch and the graphed training step's kernel switch)."""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["Switch"]


class Switch:
    __slots__ = ("enabled",)

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @contextlib.contextmanager
    def set(self, enabled: bool) -> Iterator[None]:
        previous, self.enabled = self.enabled, enabled
        try:
            yield
        finally:
            self.enabled = previous
