"""The demo repository builder (flakebot/demo/repo.py)."""
from __future__ import annotations

import re
import subprocess
import time

import git
import pytest

from flakebot.demo.repo import (
    CULPRIT_SUBJECT,
    FIX_SUBJECT,
    REMOVE_LISTENER_LINE,
    REMOVE_NS_LINE,
    RESTART_SCRIPT,
    VIRTIO_SCRIPT,
    build_demo_repo,
    restart_script_healthy,
    script_at,
)

SUSPECT = ("test/vhost", "test/vfio_user", "lib/vfio_user")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "spdk"
    t0 = time.perf_counter()
    d = build_demo_repo(path)
    print(f"\nbuild_demo_repo: 200 commits in {time.perf_counter() - t0:.3f} s")
    return d


@pytest.fixture(scope="module")
def demo_fix_merge(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "spdk"
    t0 = time.perf_counter()
    d = build_demo_repo(path, fix_index=170, with_merge=True, seed=3)
    print(f"\nbuild_demo_repo: 200 commits + merge in {time.perf_counter() - t0:.3f} s")
    return d


def _script(repo: git.Repo, sha: str, path: str = RESTART_SCRIPT) -> str:
    return (repo.commit(sha).tree / path).data_stream.read().decode()


def _first_parent(path) -> list[str]:
    out = subprocess.run(["git", "rev-list", "--first-parent", "--reverse", "HEAD"], cwd=path,
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_commit_count_and_chain(demo):
    repo = git.Repo(demo.path)
    assert len(demo.shas) == 200
    assert len(list(repo.iter_commits("HEAD"))) == 200
    assert _first_parent(demo.path) == demo.shas
    assert demo.tip == demo.shas[-1] == repo.head.commit.hexsha
    assert demo.culprit == demo.shas[137] and demo.culprit_index == 137
    assert demo.fix is None and demo.merge is None and demo.side_shas == []
    assert demo.good_index < demo.culprit_index - 50 and demo.good == demo.shas[demo.good_index]
    assert not repo.is_dirty(untracked_files=True)
    assert repo.active_branch.name == "master"


def test_same_seed_same_shas_other_seed_differs(demo, tmp_path):
    again = build_demo_repo(tmp_path / "again")
    assert again.shas == demo.shas
    other = build_demo_repo(tmp_path / "other", seed=1)
    assert other.shas[1:] != demo.shas[1:]
    assert other.culprit_index == demo.culprit_index


@pytest.mark.parametrize("n, culprit, fix, expect_culprit", [
    (200, None, None, 137),
    (20, None, None, 13),
    (10, 5, 8, 5),
    (50, 2, None, 2),
])
def test_culprit_is_first_commit_without_remove_ns(tmp_path, n, culprit, fix, expect_culprit):
    d = build_demo_repo(tmp_path / "r", n_commits=n, culprit_index=culprit, fix_index=fix)
    repo = git.Repo(d.path)
    healthy = [restart_script_healthy(_script(repo, sha)) for sha in d.shas]
    first_bad = healthy.index(False)
    assert first_bad == expect_culprit and d.shas[first_bad] == d.culprit
    end = fix if fix is not None else n
    assert healthy == [True] * expect_culprit + [False] * (end - expect_culprit) + [True] * (n - end)
    assert healthy[d.good_index]


def test_culprit_deletes_only_the_remove_ns_line(demo):
    repo = git.Repo(demo.path)
    c = repo.commit(demo.culprit)
    assert c.summary == CULPRIT_SUBJECT
    assert list(c.stats.files) == [RESTART_SCRIPT]
    before = _script(repo, c.parents[0].hexsha).splitlines()
    after = _script(repo, demo.culprit).splitlines()
    assert [line for line in before if line != REMOVE_NS_LINE] == after
    assert len(before) == len(after) + 1


def test_script_contract_and_line_numbers(demo):
    repo = git.Repo(demo.path)
    good = _script(repo, demo.good).splitlines()
    ns, listener = good.index(REMOVE_NS_LINE), good.index(REMOVE_LISTENER_LINE)
    calls = [i + 1 for i, line in enumerate(good) if line.strip() == "vm_shutdown_all"]
    assert ns < listener < calls[-1] - 1
    assert calls == [36, 54]  # as in SPDK (docs/spdk.md)
    bad = _script(repo, demo.tip).splitlines()
    assert [i + 1 for i, line in enumerate(bad) if line.strip() == "vm_shutdown_all"] == [36, 53]
    virtio = _script(repo, demo.tip, VIRTIO_SCRIPT).splitlines()
    assert [i + 1 for i, line in enumerate(virtio) if line.strip() == "vm_shutdown_all"] == [78, 97]
    common = _script(repo, demo.tip, "test/vhost/common.sh")
    assert "local timeo=${1:-90}" in common and 'notice "Waiting for VMs to shutdown..."' in common
    assert script_at(demo.path, demo.good) == _script(repo, demo.good)


@pytest.mark.parametrize("text, healthy", [
    (f"{REMOVE_NS_LINE}\n{REMOVE_LISTENER_LINE}\nvm_shutdown_all\n", True),
    (f"  {REMOVE_NS_LINE}\n\t{REMOVE_LISTENER_LINE}\n", True),
    (f"{REMOVE_LISTENER_LINE}\nvm_shutdown_all\n", False),
    (f"{REMOVE_LISTENER_LINE}\n{REMOVE_NS_LINE}\n", False),  # wrong order
    (f"# {REMOVE_NS_LINE}\n{REMOVE_LISTENER_LINE}\n", False),  # commented out
    ("", False),
])
def test_restart_script_healthy(text, healthy):
    assert restart_script_healthy(text) is healthy


def test_simulator_agrees_on_every_commit(demo_fix_merge):
    """The sim hosts read the same script; their verdict must match the builder's."""
    sim = pytest.importorskip("flakebot.demo.hosts")
    check = getattr(sim, "nvme_script_is_healthy", None)
    if check is None:
        pytest.skip("flakebot.demo.hosts has no nvme_script_is_healthy")
    d = demo_fix_merge
    repo = git.Repo(d.path)
    for sha in d.shas:
        text = _script(repo, sha)
        assert check(text) is restart_script_healthy(text), sha


def test_fix_restores_the_line(demo_fix_merge):
    d = demo_fix_merge
    repo = git.Repo(d.path)
    fix = repo.commit(d.fix)
    assert fix.summary == FIX_SUBJECT and d.fix == d.shas[170]
    assert list(fix.stats.files) == [RESTART_SCRIPT]
    assert _script(repo, d.fix) == _script(repo, d.culprit + "~1")
    assert restart_script_healthy(_script(repo, d.tip))


def test_only_culprit_and_fix_touch_the_restart_script(demo_fix_merge):
    d = demo_fix_merge
    out = subprocess.run(["git", "log", "--first-parent", "-m", "--name-only", "--format=@%H", "HEAD"],
                         cwd=d.path, capture_output=True, text=True, check=True).stdout
    touched: dict[str, set[str]] = {}
    for block in out.split("@")[1:]:
        sha, *paths = block.split()
        touched[sha] = set(paths)
    touching, suspect = [], 0
    for sha in d.shas[1:]:
        paths = touched[sha]
        if RESTART_SCRIPT in paths:
            touching.append(sha)
        elif any(p.startswith(SUSPECT) for p in paths):
            suspect += 1
    assert touching == [d.culprit, d.fix]
    assert suspect >= 5  # path weights alone do not give the culprit away


def test_merge_on_first_parent_chain(demo_fix_merge):
    d = demo_fix_merge
    repo = git.Repo(d.path)
    assert len(d.shas) == 200 and len(d.side_shas) == 2
    assert len(list(repo.iter_commits("HEAD"))) == 202
    assert _first_parent(d.path) == d.shas
    m = d.shas.index(d.merge)
    assert d.good_index < m < d.culprit_index
    merge = repo.commit(d.merge)
    assert [p.hexsha for p in merge.parents] == [d.shas[m - 1], d.side_shas[-1]]
    side0 = repo.commit(d.side_shas[0])
    assert side0.parents[0].hexsha == d.shas[m - 3]  # forked before two master commits: a real --no-ff merge
    assert repo.is_ancestor(d.side_shas[0], d.tip)
    assert [h.name for h in repo.heads] == ["master"]
    # the merged tree carries both sides
    for sha in d.side_shas:
        for path in repo.commit(sha).stats.files:
            assert (merge.tree / path).binsha == (repo.commit(d.side_shas[-1]).tree / path).binsha


def test_messages_trailers_authors_dates(demo_fix_merge):
    d = demo_fix_merge
    repo = git.Repo(d.path)
    ids = set()
    subjects = []
    last = 0
    for sha in d.shas + d.side_shas:
        c = repo.commit(sha)
        change = re.findall(r"^Change-Id: (I[0-9a-f]{40})$", c.message, re.M)
        assert len(change) == 1, c.message
        ids.add(change[0])
        assert re.search(rf"^Signed-off-by: {re.escape(c.author.name)} <{re.escape(c.author.email)}>$",
                         c.message, re.M)
        subjects.append(c.summary)
    for sha in d.shas:
        t = repo.commit(sha).authored_date
        assert t > last
        last = t
    assert len(ids) == 202
    assert len(set(subjects)) == len(subjects)
    styled = [s for s in subjects if re.match(r"^[A-Za-z0-9_./-]+: \S", s)]
    assert len(styled) >= 199  # all but the initial import and the merge
    assert len({repo.commit(s).author.email for s in d.shas}) >= 5
    t0, t1 = repo.commit(d.shas[0]).authored_date, repo.commit(d.shas[-1]).authored_date
    assert 190 * 3600 < t1 - t0 < 210 * 3600  # about one commit an hour


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_commits=3), "n_commits"),
    (dict(n_commits=10, culprit_index=10), "culprit_index"),
    (dict(n_commits=10, culprit_index=0), "culprit_index"),
    (dict(n_commits=10, culprit_index=5, fix_index=5), "fix_index"),
    (dict(n_commits=10, culprit_index=5, good_index=5), "good_index"),
    (dict(n_commits=10, culprit_index=2, with_merge=True), "with_merge"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_demo_repo(tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        build_demo_repo(tmp_path, n_commits=5)
    assert (tmp_path / "keep.txt").read_text() == "mine"
