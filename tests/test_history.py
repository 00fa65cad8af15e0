"""History tests, against small throwaway git repositories (tests/gitrepo.py)."""
from __future__ import annotations

from unittest import mock

import git
import pytest

from flakebot.history import History, HistoryError, change_id_of
from tests.gitrepo import AUTHOR_EMAIL, AUTHOR_NAME, change_id, git as run_git, make_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """main: 0 - 1 - 2 - 3(merge of side3_0, side3_1) - 4 - 5(merge) - 6 - 7;
    a tag v1 at 2; a branch 'other' forked from 1 with one commit."""
    path = tmp_path_factory.mktemp("repo")
    shas = make_repo(
        path, 8, merges_at=(3, 5),
        files={0: {"README": "hello\n", "lib/nvme/a.c": "int a;\n"},
               4: {"lib/nvme/a.c": "int a = 4;\n", "README": None},
               5: {"test/vfio_user/x.sh": "timeo=90\n"}},
    )
    run_git(path, "tag", "v1", shas[2])
    run_git(path, "branch", "other", shas[1])
    run_git(path, "checkout", "-q", "other")
    (path / "other.txt").write_text("x\n")
    run_git(path, "add", "other.txt")
    run_git(path, "commit", "-q", "-m", "other work", tick=100)
    other = run_git(path, "rev-parse", "HEAD")
    run_git(path, "checkout", "-q", "main")
    return path, shas, other


@pytest.fixture
def h(repo):
    hist = History(repo[0])
    yield hist
    hist.close()


def test_not_a_repo(tmp_path):
    with pytest.raises(HistoryError, match="not a git repository") as e:
        History(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(HistoryError):
        History(tmp_path / "missing")


def test_resolve(h, repo):
    _, shas, other = repo
    assert h.resolve(shas[4]) == shas[4]
    assert h.resolve(shas[4][:8]) == shas[4]
    assert h.resolve("main") == shas[7]
    assert h.resolve("HEAD") == shas[7]
    assert h.resolve("HEAD~3") == shas[4]
    assert h.resolve("HEAD~4") == shas[3]
    assert h.resolve("v1") == shas[2]
    assert h.resolve("other") == other
    assert h.resolve(f"{shas[3]}^2") == shas.side[3][-1]
    assert h.resolve("  main ") == shas[7]


def test_resolve_annotated_tag_peels_to_commit(repo, h):
    path, shas, _ = repo
    run_git(path, "tag", "-a", "-m", "annotated", "v2", shas[5])
    assert h.resolve("v2") == shas[5]


@pytest.mark.parametrize("ref", ["nope", "HEAD~99", "0" * 40, "deadbeef", "main:README"])
def test_resolve_unknown(h, ref):
    with pytest.raises(HistoryError) as e:
        h.resolve(ref)
    assert str(e.value) == f"unknown ref '{ref}'"


@pytest.mark.parametrize("ref", ["-h", "--all", "--output=/tmp/x", "-"])
def test_refs_starting_with_dash_rejected(h, ref):
    with mock.patch.object(git.Git, "execute", side_effect=AssertionError("git was called")):
        with pytest.raises(HistoryError, match="must not start with '-'"):
            h.resolve(ref)
        with pytest.raises(HistoryError, match="must not start with '-'"):
            h.first_parent_range(ref, "main")
        with pytest.raises(HistoryError, match="must not start with '-'"):
            h.first_parent_range("main", ref)
        with pytest.raises(HistoryError, match="must not start with '-'"):
            h.commit(ref)
        with pytest.raises(HistoryError, match="must not start with '-'"):
            h.fetch(ref)


@pytest.mark.parametrize("ref", ["", "   ", "a\nb", "a\0b"])
def test_bad_ref_text(h, ref):
    with pytest.raises(HistoryError):
        h.resolve(ref)


def test_first_parent_range_with_merges(h, repo):
    _, shas, other = repo
    commits = h.first_parent_range(shas[1], "main")
    assert [c.sha for c in commits] == shas[2:]
    side = {s for ss in shas.side.values() for s in ss}
    assert not side & {c.sha for c in commits}
    merge = commits[1]  # shas[3]
    assert merge.sha == shas[3]
    assert merge.parents == (shas[2], shas.side[3][-1])
    assert merge.paths == ("side3_0.txt", "side3_1.txt")
    assert commits[3].paths == ("side5_0.txt", "side5_1.txt", "test/vfio_user/x.sh")
    assert commits[2].paths == ("README", "file4.txt", "lib/nvme/a.c")  # deletion included
    assert [c.subject for c in commits] == [f"commit {i}" for i in range(2, 8)]


def test_first_parent_range_single_commit(h, repo):
    _, shas, _ = repo
    assert [c.sha for c in h.first_parent_range(shas[2], shas[3])] == [shas[3]]
    assert [c.sha for c in h.first_parent_range("HEAD~1", "HEAD")] == [shas[7]]


def test_first_parent_range_from_root(h, repo):
    _, shas, _ = repo
    assert [c.sha for c in h.first_parent_range(shas[0], shas[7])] == shas[1:]


def test_range_empty(h, repo):
    _, shas, _ = repo
    with pytest.raises(HistoryError, match="empty range"):
        h.first_parent_range(shas[4], shas[4])
    with pytest.raises(HistoryError, match="empty range"):
        h.first_parent_range("main", "HEAD")


def test_range_not_ancestor(h, repo):
    _, shas, other = repo
    # reversed
    with pytest.raises(HistoryError, match="'main' is not an ancestor of 'v1'"):
        h.first_parent_range("main", "v1")
    # unrelated branch
    with pytest.raises(HistoryError, match="not an ancestor"):
        h.first_parent_range(other, "main")
    # an ancestor, but only through a side branch: not on the first-parent chain
    assert h.is_ancestor(shas.side[3][0], "main")
    with pytest.raises(HistoryError, match="not an ancestor of 'main' along first parents"):
        h.first_parent_range(shas.side[3][0], "main")


def test_range_unknown_ref(h):
    with pytest.raises(HistoryError, match="unknown ref 'nope'"):
        h.first_parent_range("nope", "main")


def test_commit_details(h, repo):
    _, shas, _ = repo
    c = h.commit(shas[4])
    assert c.sha == shas[4]
    assert c.subject == "commit 4"
    assert c.author == f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>"
    assert c.date == "2023-11-14T22:21:20+00:00"  # tick 8 of make_repo's clock
    assert c.change_id == change_id(4)
    assert c.parents == (shas[3],)
    assert c.paths == ("README", "file4.txt", "lib/nvme/a.c")


def test_root_commit_lists_all_files(h, repo):
    _, shas, _ = repo
    c = h.commit(shas[0])
    assert c.parents == ()
    assert c.paths == ("README", "file0.txt", "lib/nvme/a.c")


def test_range_matches_commit(h, repo):
    _, shas, _ = repo
    assert h.first_parent_range(shas[0], shas[7]) == [h.commit(s) for s in shas[1:]]


def test_change_id_trailer_variants(tmp_path):
    cid1, cid2 = "I" + "1" * 40, "I" + "2" * 40
    messages = {
        0: "no trailer at all\n",
        1: f"subject\n\nbody mentions\nChange-Id: {cid1}\nin the middle\n\nSigned-off-by: A <a@b>\n",
        2: f"subject\n\nbody\n\nChange-Id: {cid1}\nSigned-off-by: A <a@b>\nChange-Id: {cid2}\n",
        3: f"subject\n\nSigned-off-by: A <a@b>\nChange-Id: {cid1}\nReviewed-by: B <b@c>\n",
        4: f"Change-Id: {cid1}\n",
        5: "subject\n\nChange-Id: Ishort\n",
    }
    shas = make_repo(tmp_path, 6, messages=messages)
    h = History(tmp_path)
    assert [h.commit(s).change_id for s in shas] == [None, None, cid2, cid1, None, None]
    assert h.commit(shas[3]).subject == "subject"


def test_change_id_of():
    assert change_id_of("") is None
    assert change_id_of("s\n\nchange-id: I" + "a" * 40) == "I" + "a" * 40
    assert change_id_of("s\n\nChange-Id: I" + "A" * 40) is None


def test_is_ancestor(h, repo):
    _, shas, other = repo
    assert h.is_ancestor(shas[1], shas[5])
    assert h.is_ancestor(shas[5], shas[5])
    assert not h.is_ancestor(shas[5], shas[1])
    assert not h.is_ancestor(other, "main")
    with pytest.raises(HistoryError, match="unknown ref"):
        h.is_ancestor("nope", "main")


def test_show_file(h, repo):
    _, shas, _ = repo
    assert h.show_file(shas[0], "lib/nvme/a.c") == "int a;\n"
    assert h.show_file(shas[4], "lib/nvme/a.c") == "int a = 4;\n"
    assert h.show_file("main", "lib/nvme/a.c") == "int a = 4;\n"
    assert h.show_file(shas[3], "README") == "hello\n"
    assert h.show_file(shas[4], "README") is None  # deleted
    assert h.show_file(shas[7], "test/vfio_user/x.sh") == "timeo=90\n"
    assert h.show_file(shas[4], "test/vfio_user/x.sh") is None
    assert h.show_file(shas[0], "lib") is None  # a directory
    assert h.show_file(shas[0], "nope/deeper") is None
    with pytest.raises(HistoryError):
        h.show_file("nope", "README")


def test_fetch(tmp_path, repo):
    upstream, shas, _ = repo
    clone = tmp_path / "clone"
    git.Repo.clone_from(str(upstream), str(clone), branch="main")
    h = History(clone)
    assert h.resolve("origin/main") == shas[7]
    h.fetch()
    with pytest.raises(HistoryError, match="git fetch nowhere failed"):
        h.fetch("nowhere")


def test_range_is_one_git_log_call(tmp_path):
    shas = make_repo(tmp_path, 300, merges_at=(50, 150), side_commits=1)
    h = History(tmp_path)
    calls = []
    real = git.Git.execute

    def counting(self, command, *a, **kw):
        calls.append(command)
        return real(self, command, *a, **kw)

    # Speed comes from not spawning git per commit (timing is for benchmarks).
    with mock.patch.object(git.Git, "execute", counting):
        commits = h.first_parent_range(shas[0], shas[-1])
    assert [c.sha for c in commits] == shas[1:]
    assert len(calls) <= 3  # two rev-parse + one log


def test_docstring_examples_run():
    import doctest

    import flakebot.history

    result = doctest.testmod(flakebot.history)
    assert result.attempted > 0 and result.failed == 0
