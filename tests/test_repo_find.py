"""find_repo reads the repository root from the files (no git process) and agrees with git."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import init_git, sh


def _git_top(cwd: Path, env: dict | None = None) -> Path:
    return Path(sh(["git", "rev-parse", "--show-toplevel"], cwd=cwd, env=env
                   ).stdout.strip()).resolve()


@pytest.fixture
def repos(tmp_path):
    main = init_git(tmp_path / "main")
    (main / "src" / "deep").mkdir(parents=True)
    sh(["git", "worktree", "add", "-q", "-b", "wt", str(tmp_path / "wt")], cwd=main)
    (tmp_path / "wt" / "sub").mkdir()
    inner = init_git(main / "src" / "inner")  # a repository inside another's work tree
    (tmp_path / "link").symlink_to(main / "src" / "deep")
    return tmp_path, main, inner


@pytest.mark.parametrize("where", ["main", "main/src/deep", "wt", "wt/sub",
                                   "main/src/inner", "link"])
def test_root_read_from_the_files_is_gits(repos, where):
    from _evlib.repo import _toplevel_from_files, find_repo

    start = repos[0] / where
    top = _git_top(start)
    assert _toplevel_from_files(start) == top  # answered without git
    assert find_repo(start) == top
    assert find_repo(str(start)) == top


def test_cwd_is_the_default(repos, monkeypatch):
    from _evlib.repo import find_repo

    monkeypatch.chdir(repos[0] / "wt" / "sub")
    assert find_repo() == _git_top(repos[0] / "wt" / "sub") == (repos[0] / "wt").resolve()


def test_git_dir_in_the_environment_is_gits_answer(repos, monkeypatch):
    from _evlib.repo import _toplevel_from_files, find_repo

    tmp, main, _inner = repos
    other = tmp / "elsewhere"
    other.mkdir()
    env = {"GIT_DIR": str(main / ".git"), "GIT_WORK_TREE": str(other)}
    top = _git_top(main / "src" / "deep", env)
    assert top == other.resolve()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _toplevel_from_files(main / "src" / "deep") is None  # left to git
    assert find_repo(main / "src" / "deep") == top


def test_config_that_moves_the_work_tree_is_left_to_git(repos):
    from _evlib.repo import _toplevel_from_files, find_repo

    tmp, main, _inner = repos
    moved = tmp / "moved"
    moved.mkdir()
    sh(["git", "config", "core.worktree", str(moved)], cwd=main)
    start = main / "src" / "deep"
    assert _toplevel_from_files(start) is None
    assert find_repo(start) == _git_top(start) == moved.resolve()


@pytest.mark.parametrize("where", ["main/.git", "main/.git/refs", "bare.git", "bare.git/refs",
                                   "plain"])
def test_no_work_tree_is_gits_error(repos, where):
    from _evlib.errors import EVError
    from _evlib.repo import _toplevel_from_files, find_repo

    tmp = repos[0]
    sh(["git", "init", "-q", "--bare", str(tmp / "bare.git")])
    (tmp / "plain").mkdir()
    start = tmp / where
    assert sh(["git", "rev-parse", "--show-toplevel"], cwd=start, check=False).returncode != 0
    assert _toplevel_from_files(start) is None
    with pytest.raises(EVError) as exc:
        find_repo(start)
    assert exc.value.line().startswith(f"not a git repository: {start}")


def test_a_dot_git_file_naming_no_repository_is_gits_error(repos):
    from _evlib.errors import EVError
    from _evlib.repo import _toplevel_from_files, find_repo

    tmp, main, _inner = repos
    broken = main / "src" / "broken"
    broken.mkdir()
    (tmp / "notgit").mkdir()
    (broken / ".git").write_text(f"gitdir: {tmp / 'notgit'}\n")
    assert sh(["git", "rev-parse", "--show-toplevel"], cwd=broken, check=False).returncode != 0
    assert _toplevel_from_files(broken) is None
    with pytest.raises(EVError) as exc:
        find_repo(broken)
    assert exc.value.line().startswith(f"not a git repository: {broken}")
