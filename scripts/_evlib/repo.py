"""Repository discovery and state, all through proc.git."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import USAGE, EVError
from .proc import git, git_ok, run


def find_repo(path: str | os.PathLike | None = None) -> Path:
    """The top of the git work tree containing path (default: the current directory)."""
    start = Path(path or os.getcwd())
    if not start.exists():
        raise EVError(f"--repo {start} does not exist", code=USAGE,
                      hint="pass the path of a git repository")
    cp = run(["git", "rev-parse", "--show-toplevel"], cwd=start, check=False)
    if cp.returncode != 0:
        raise EVError(f"not a git repository: {start}", code=USAGE,
                      hint="run inside a git repository or pass --repo PATH (git init first)")
    return Path(cp.stdout.strip()).resolve()


def require_dvc(repo: Path) -> None:
    if not (repo / ".dvc").is_dir():
        raise EVError(f"DVC is not initialised in {repo}", code=USAGE,
                      hint="run `dvc init` and commit .dvc/ first")


def common_dir(repo: Path) -> Path:
    """The git common dir (shared by all worktrees of the repository)."""
    out = git(repo, "rev-parse", "--git-common-dir")
    p = Path(out)
    return (p if p.is_absolute() else repo / p).resolve()


def main_worktree(repo: Path) -> Path:
    """The main worktree (the first one `git worktree list` names)."""
    out = git(repo, "worktree", "list", "--porcelain")
    for line in out.splitlines():
        if line.startswith("worktree "):
            return Path(line[len("worktree "):]).resolve()
    return repo


def head_commit(repo: Path) -> str | None:
    cp = run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo, check=False)
    return cp.stdout.strip() or None


def dirty_paths(repo: Path) -> list[str]:
    """Paths with uncommitted changes (tracked or untracked, not ignored)."""
    out = git(repo, "status", "--porcelain", "--untracked-files=all")
    return [line[3:] for line in out.splitlines() if line.strip()]


def is_dirty(repo: Path) -> bool:
    return bool(dirty_paths(repo))


def tag_exists(repo: Path, tag: str) -> bool:
    return git_ok(repo, "rev-parse", "--verify", "-q", f"refs/tags/{tag}")


def branch_exists(repo: Path, branch: str) -> bool:
    return git_ok(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}")


def resolve_commit(repo: Path, ref: str) -> str | None:
    """The commit a branch, tag or commit names (None if it names none)."""
    if ref.startswith("-"):  # never let a ref be read as a git option
        return None
    cp = run(["git", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], cwd=repo, check=False)
    return cp.stdout.strip() if cp.returncode == 0 else None
