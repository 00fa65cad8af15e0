"""Build small throwaway git repositories for tests, deterministically.

    sha = make_repo(tmp_path / "repo", 5, merges_at=(3,))
    sha[0]           # root commit
    sha[3]           # a merge commit on the first-parent chain
    sha.side[3]      # the side-branch commits it merged, oldest first

Every first-parent commit i gets subject ``commit i``, touches ``file{i}.txt``
(plus whatever ``files[i]`` says) and carries a Gerrit ``Change-Id`` trailer
``change_id(i)``. Author, committer and dates are fixed, so shas are stable.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Mapping, Optional

AUTHOR_NAME = "Test Author"
AUTHOR_EMAIL = "test@example.com"
BASE_EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z


class Shas(list):
    """The first-parent chain, oldest first; ``.side[i]`` lists the side-branch
    commits merged by merge commit ``i``."""

    side: dict[int, list[str]]


def change_id(i: int, side: Optional[int] = None) -> str:
    key = f"change {i}" if side is None else f"change {i} side {side}"
    return "I" + hashlib.sha1(key.encode()).hexdigest()


def _env(tick: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    date = f"@{BASE_EPOCH + 60 * tick} +0000"
    env.update(
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_AUTHOR_DATE=date,
        GIT_COMMITTER_DATE=date,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


def git(path: Path, *args: str, tick: int = 0) -> str:
    out = subprocess.run(
        ["git", *args], cwd=path, env=_env(tick), check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _write(path: Path, files: Mapping[str, Optional[str]]) -> None:
    for name, content in files.items():
        f = path / name
        if content is None:
            if f.exists():
                git(path, "rm", "-q", "--", name)
            continue
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(content)
        git(path, "add", "--", name)


def make_repo(
    path: str | os.PathLike,
    n_commits: int,
    *,
    merges_at: tuple[int, ...] | list[int] = (),
    files: Mapping[int, Mapping[str, Optional[str]]] = {},
    side_commits: int = 2,
    messages: Mapping[int, str] = {},
    change_ids: bool = True,
) -> Shas:
    """Create a repo at ``path`` (branch ``main``) with ``n_commits`` commits on
    the first-parent chain; returns their shas, oldest first.

    - ``merges_at``: indexes (>= 1) whose commit is a ``--no-ff`` merge of a
      side branch of ``side_commits`` commits forked from commit i-1; each side
      commit j touches ``side{i}_{j}.txt``. The merge itself adds nothing.
    - ``files``: ``{i: {path: content or None}}`` extra changes at commit i
      (None deletes); for a merge they go on its last side commit.
    - ``messages``: ``{i: full message}`` replaces the default message.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    shas = Shas()
    shas.side = {}
    tick = 0
    for i in range(n_commits):
        tick += 1
        trailer = f"\n\nChange-Id: {change_id(i)}\n" if change_ids else "\n"
        message = messages.get(i, f"commit {i}\n\nBody of commit {i}.{trailer}")
        if i in merges_at:
            if i == 0:
                raise ValueError("the root commit cannot be a merge")
            branch = f"side{i}"
            git(path, "checkout", "-q", "-b", branch, shas[i - 1])
            side = []
            for j in range(side_commits):
                tick += 1
                extra = dict(files.get(i, {})) if j == side_commits - 1 else {}
                _write(path, {f"side{i}_{j}.txt": f"side {i} {j}\n", **extra})
                side_trailer = f"\n\nChange-Id: {change_id(i, j)}\n" if change_ids else "\n"
                git(path, "commit", "-q", "-m", f"side {i}.{j}{side_trailer}", tick=tick)
                side.append(git(path, "rev-parse", "HEAD"))
            git(path, "checkout", "-q", "main")
            tick += 1
            git(path, "merge", "-q", "--no-ff", "-m", message, branch, tick=tick)
            shas.side[i] = side
        else:
            _write(path, {f"file{i}.txt": f"content {i}\n", **files.get(i, {})})
            git(path, "commit", "-q", "--allow-empty", "-m", message, tick=tick)
        shas.append(git(path, "rev-parse", "HEAD"))
    return shas
