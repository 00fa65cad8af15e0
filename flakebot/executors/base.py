"""The executor interface every backend implements (docs/architecture.md: submit, poll,
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
        """Current state of a submitted request.

        ``external_id``, when set, must itself be a handle for the same
        request, valid for every later poll and after a restart: the
        dispatcher stores it and follows it from then on (Jenkins: the queue
        item's handle becomes the build's). Never a process id or anything
        else that only describes the request."""

    def console(self, handle: str) -> Iterator[str]:
        """The console log as lines (with or without line ends), streamed."""

    def cancel(self, handle: str) -> None:
        """Stop a request (campaign abort)."""

    # Optional: reattach(request, external_id) -> handle or None. After a
    # restart, the handle to follow a request recorded before it by, or None
    # when nothing of it can be followed (the dispatcher then submits it again
    # under the same run id). Without it, every pending request is resubmitted.
