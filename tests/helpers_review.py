"""Helpers the review (reporter and outbox) tests share."""
from __future__ import annotations

import time


class FakeClock:
    """Fake time for the reporters: sleep() advances time instead of waiting,
    and records how long (rate-limit waits, backoff)."""

    def __init__(self):
        self.t = time.time()
        self.sleeps: list[float] = []

    def time(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s
