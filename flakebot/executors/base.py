"""The executor interface every backend implements (DESIGN.md: submit, poll,
fetch console and host, cancel, slots). Backends live in sibling modules and
are chosen by name from config (`make_executor`)."""
from __future__ import annotations

from typing import Iterator, Protocol

from flakebot.model import BuildStatus, RunRequest


class ExecutorError(Exception):
    """A backend could not do what was asked (one-line message)."""


class Executor(Protocol):
    name: str

    def slots(self) -> int:
        """How many requests may be in flight at once (free + busy hosts)."""

    def submit(self, request: RunRequest) -> str:
        """Start a request; return a handle (string, stored) to follow it by."""

    def poll(self, handle: str) -> BuildStatus:
        """Current state of a submitted request."""

    def console(self, handle: str) -> Iterator[str]:
        """The console log as lines (with or without line ends), streamed."""

    def cancel(self, handle: str) -> None:
        """Stop a request (campaign abort)."""
