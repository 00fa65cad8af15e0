"""A reporter that writes comments instead of posting them: to a folder (one
file per delivery key) or to a stream (stdout). For the demo and for anyone
without credentials. With a folder it is also "never twice": a file already
written for a key counts as posted.

    >>> import io
    >>> from flakebot.reporters import Item
    >>> out = io.StringIO()
    >>> DryRunReporter("github", stream=out).post(Item("github-issue:3322:1", "github-issue:3322", "hi"))
    'stdout'
    >>> print(out.getvalue().strip())
    ===== github-issue:3322:1 -> github-issue:3322 =====
    hi
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import IO, Optional

from flakebot.reporters import Item


def key_filename(key: str, platform: str) -> str:
    ext = ".md" if platform == "github" else ".txt"
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)[:200] + ext


class DryRunReporter:
    def __init__(self, platform: str, folder: Optional[os.PathLike | str] = None,
                 stream: Optional[IO[str]] = None):
        if platform not in ("gerrit", "github"):
            raise ValueError("platform must be 'gerrit' or 'github'")
        self.platform = platform
        self.folder = Path(folder) if folder is not None else None
        self.stream = stream

    def _path(self, item: Item) -> Path:
        assert self.folder is not None
        return self.folder / key_filename(item.key, self.platform)

    def find_posted(self, item: Item) -> Optional[str]:
        if self.folder is not None and self._path(item).exists():
            return str(self._path(item))
        return None

    def post(self, item: Item) -> str:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(item)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"target: {item.target}\n\n{item.body}", encoding="utf-8")
            os.replace(tmp, path)  # atomic: a file exists only when complete
            return str(path)
        out = self.stream or sys.stdout
        out.write(f"===== {item.key} -> {item.target} =====\n{item.body}\n")
        out.flush()
        return "stdout"


def dryrun_reporters(folder: Optional[os.PathLike | str] = None,
                     stream: Optional[IO[str]] = None) -> dict[str, DryRunReporter]:
    """Reporters for both platforms, as ``outbox.flush`` takes them."""
    return {p: DryRunReporter(p, folder, stream) for p in ("gerrit", "github")}
