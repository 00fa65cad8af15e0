"""History: commits, first-parent ranges and file contents from a local git clone.

GitPython runs git without a shell; refs are still validated (a ref starting
with '-' would be read as an option). A range is read with one ``git log``
call, so a few hundred commits cost one process, not hundreds.

"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Optional

import git

from flakebot import model

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_CHANGE_ID_RE = re.compile(r"^(?i:Change-Id):\s*(I[0-9a-f]{40})$")
# %x1e starts a record, %x1f separates fields; --name-only -z adds the paths.
_LOG_FORMAT = "--format=%x1e%H%x1f%P%x1f%an <%ae>%x1f%aI%x1f%B%x1f"


class HistoryError(Exception):
    """A git question could not be answered (one-line message)."""


def change_id_of(message: str) -> Optional[str]:
    """The Gerrit Change-Id from the trailer block (the last paragraph) of a
    commit message; the last one if there are several; None if absent.

        >>> change_id_of("fix\\n\\nChange-Id: I" + "a" * 40 + "\\nSigned-off-by: X <x@y>\\n")
        'Iaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
        >>> change_id_of("Change-Id: I" + "a" * 40 + "\\n\\nmentioned in the body") is None
        True
    """
    paragraphs = [p for p in re.split(r"\n\s*\n", message.strip()) if p.strip()]
    if len(paragraphs) < 2:  # a subject line alone has no trailer block
        return None
    found = None
    for line in paragraphs[-1].splitlines():
        m = _CHANGE_ID_RE.match(line.strip())
        if m:
            found = m.group(1)
    return found


def _check_ref(ref: str, what: str = "ref") -> str:
    if not isinstance(ref, str) or not ref.strip():
        raise HistoryError(f"empty {what}")
    ref = ref.strip()
    if ref.startswith("-"):
        raise HistoryError(f"invalid {what} {ref!r}: must not start with '-'")
    if any(c in ref for c in "\0\n\r") or len(ref) > 1000:
        raise HistoryError(f"invalid {what} {ref!r}")
    return ref


class History:
    """A local git clone (e.g. of SPDK).

        >>> import tempfile, sys; sys.path.insert(0, ".")
        >>> from tests.gitrepo import make_repo
        >>> path = tempfile.mkdtemp()
        >>> shas = make_repo(path, 4, merges_at=(2,))
        >>> h = History(path)
        >>> [c.sha for c in h.first_parent_range(shas[0], "main")] == shas[1:]
        True
        >>> h.commit(shas[2]).paths   # the merge stands for its side branch
        ('side2_0.txt', 'side2_1.txt')
    """

    def __init__(self, repo_path: str | os.PathLike):
        self.path = os.fspath(repo_path)
        try:
            self.repo = git.Repo(self.path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise HistoryError(f"{self.path} is not a git repository") from None
        self._show_file = lru_cache(maxsize=1024)(self._show_file_uncached)

    def close(self) -> None:
        self.repo.close()

    # ------------------------------------------------------------ refs

    def resolve(self, ref: str) -> str:
        """Full sha of the commit ``ref`` names (sha, short sha, branch, tag,
        ``HEAD~3``, ...). HistoryError "unknown ref 'X'" otherwise."""
        ref = _check_ref(ref)
        try:
            out = self.repo.git.rev_parse("--verify", "--quiet", "--end-of-options",
                                          f"{ref}^{{commit}}")
        except git.GitCommandError:
            raise HistoryError(f"unknown ref '{ref}'") from None
        sha = out.strip()
        if not _SHA_RE.match(sha):
            raise HistoryError(f"unknown ref '{ref}'")
        return sha

    def is_ancestor(self, a: str, b: str) -> bool:
        """True if commit ``a`` is an ancestor of (or equal to) ``b``, along any parents."""
        a, b = _check_ref(a), _check_ref(b)
        sa, sb = self.resolve(a), self.resolve(b)
        try:
            self.repo.git.merge_base("--is-ancestor", sa, sb)
        except git.GitCommandError as e:
            if e.status == 1:
                return False
            raise HistoryError(f"git merge-base failed: {_one_line(e)}") from None
        return True

    def fetch(self, remote: str = "origin") -> None:
        """``git fetch`` from ``remote`` (a configured remote name or URL)."""
        remote = _check_ref(remote, "remote")
        try:
            self.repo.git.fetch("--quiet", "--end-of-options", remote)
        except git.GitCommandError as e:
            raise HistoryError(f"git fetch {remote} failed: {_one_line(e)}") from None

    # ------------------------------------------------------------ commits

    def commit(self, ref: str) -> model.Commit:
        """One commit: subject, author "Name <email>", ISO date, Change-Id,
        paths touched vs its first parent (root commit: all its files), parents."""
        sha = self.resolve(ref)
        commits = self._log("-1", sha)
        if not commits:
            raise HistoryError(f"unknown ref '{ref}'")
        return commits[0]

    def first_parent_range(self, good: str, bad: str) -> list[model.Commit]:
        """The commits after ``good`` up to and including ``bad`` along bad's
        first-parent chain, oldest first. A merge on that chain stands for its
        side branch: its paths are its diff against its first parent.

        HistoryError if ``good`` is not on bad's first-parent chain or the
        range is empty."""
        good, bad = _check_ref(good), _check_ref(bad)
        g, b = self.resolve(good), self.resolve(bad)
        if g == b:
            raise HistoryError(f"empty range: '{good}' and '{bad}' are the same commit")
        commits = self._log(b, f"^{g}")
        # The first-parent walk from bad stops at the first commit reachable
        # from good; that is good itself only if good is on the chain.
        if not commits or not commits[-1].parents or commits[-1].parents[0] != g:
            raise HistoryError(f"'{good}' is not an ancestor of '{bad}' along first parents")
        commits.reverse()
        return commits

    def _log(self, *revs: str) -> list[model.Commit]:
        """Parse one ``git log --first-parent`` over ``revs`` (validated shas)."""
        try:
            out = self.repo.git.log(
                "--first-parent", "-m", "--root", "--name-only", "-z",
                "--no-renames", "--no-color", "--encoding=UTF-8", _LOG_FORMAT,
                *revs, "--",
            )
        except git.GitCommandError as e:
            raise HistoryError(f"git log failed: {_one_line(e)}") from None
        return [_parse_record(rec) for rec in out.split("\x1e") if rec.strip("\0\n")]

    # ------------------------------------------------------------ files

    def show_file(self, sha: str, path: str) -> Optional[str]:
        """Content of ``path`` at commit ``sha`` (text, undecodable bytes
        replaced), or None if there is no such file there."""
        full = self.resolve(sha)
        return self._show_file(full, path.strip("/"))

    def _show_file_uncached(self, sha: str, path: str) -> Optional[str]:
        try:
            obj = self.repo.commit(sha).tree / path
        except KeyError:
            return None
        if obj.type != "blob":
            return None
        return obj.data_stream.read().decode("utf-8", errors="replace")


def _parse_record(rec: str) -> model.Commit:
    parts = rec.split("\x1f", 5)
    if len(parts) != 6:
        raise HistoryError("unexpected git log output")
    sha, parents, author, date, message, names = parts
    names = names.lstrip("\0")
    if names.startswith("\n"):
        names = names[1:]
    paths = tuple(sorted(dict.fromkeys(p for p in names.split("\0") if p)))
    return model.Commit(
        sha=sha.strip("\0\n"),
        subject=message.split("\n", 1)[0].strip(),
        author=author,
        date=date,
        change_id=change_id_of(message),
        paths=paths,
        parents=tuple(parents.split()),
    )


def _one_line(e: git.GitCommandError) -> str:
    text = (e.stderr or "").strip() or str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[-1] if lines else "error"
    return line.removeprefix("stderr: ").strip("'")
