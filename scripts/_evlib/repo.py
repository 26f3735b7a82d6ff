"""Repository discovery and state, all through proc.git."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import USAGE, EVError


def run(*args, **kwargs):
    # proc (and subprocess) on first use: finding the repository usually needs no process.
    from .proc import run as _run

    return _run(*args, **kwargs)


def git(*args, **kwargs):
    from .proc import git as _git

    return _git(*args, **kwargs)


def git_ok(*args, **kwargs):
    from .proc import git_ok as _git_ok

    return _git_ok(*args, **kwargs)


# Any of these can move or hide the work tree from what the files say: git decides then.
_GIT_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES",
            "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
            "GIT_OBJECT_DIRECTORY", "EV_GIT")


def _config_moves_tree(*configs: Path) -> bool:
    """core.worktree / core.bare / worktree config seen: leave the answer to git."""
    for c in configs:
        try:
            text = c.read_text(errors="replace").lower()
        except FileNotFoundError:
            continue
        except OSError:
            return True
        for line in text.splitlines():
            kv = line.split("#")[0].split(";")[0].replace(" ", "").replace("\t", "")
            if (kv.startswith(("worktree", "[include")) or "worktree" in kv
                    or (kv.startswith("bare") and kv != "bare=false")):
                return True
    return False


def _is_gitdir(d: Path) -> bool:
    return (d / "HEAD").is_file() and ((d / "commondir").is_file() or (d / "objects").is_dir())


def _toplevel_from_files(start: Path) -> Path | None:
    """What `git rev-parse --show-toplevel` prints, read from the files; None = ask git.

    Only the plain cases are answered here (a .git directory or a worktree's .git file, found
    walking up, owned by this user, with no config or environment that moves the work tree);
    anything else, including "not a repository", is left to git itself.
    """
    if any(os.environ.get(k) for k in _GIT_ENV):
        return None
    try:
        d = start.resolve(strict=True)
        if not d.is_dir():
            return None
        dev, uid = d.stat().st_dev, os.geteuid()
        while True:
            st = d.stat()
            if st.st_dev != dev:  # git stops at a mount point
                return None
            dotgit = d / ".git"
            if dotgit.is_dir() and not dotgit.is_symlink():
                if (not _is_gitdir(dotgit) or not (dotgit / "refs").is_dir()
                        or st.st_uid != uid or dotgit.stat().st_uid != uid
                        or _config_moves_tree(dotgit / "config")):
                    return None
                return d
            if dotgit.is_file() and not dotgit.is_symlink():
                line = dotgit.read_text(errors="replace").strip()
                if not line.startswith("gitdir: ") or "\n" in line:
                    return None
                gd = Path(line[len("gitdir: "):])
                gd = (gd if gd.is_absolute() else d / gd).resolve()
                if not _is_gitdir(gd) or st.st_uid != uid or gd.stat().st_uid != uid:
                    return None
                common = gd
                if (gd / "commondir").is_file():
                    cd = Path((gd / "commondir").read_text(errors="replace").strip())
                    common = (cd if cd.is_absolute() else gd / cd).resolve()
                if _config_moves_tree(gd / "config", gd / "config.worktree", common / "config"):
                    return None
                return d
            if dotgit.exists() or dotgit.is_symlink() or (d / "HEAD").exists():
                return None  # something git would look at closer (a bare repository?)
            if d.parent == d:
                return None
            d = d.parent
    except OSError:
        return None


def find_repo(path: str | os.PathLike | None = None) -> Path:
    """The top of the git work tree containing path (default: the current directory)."""
    start = Path(path or os.getcwd())
    if not start.exists():
        raise EVError(f"--repo {start} does not exist", code=USAGE,
                      hint="pass the path of a git repository")
    top = _toplevel_from_files(start)
    if top is not None:
        return top
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


def peel_commits(repo: Path, ids: list[str]) -> dict[str, str]:
    """{tag object id: the commit it finally points at} for tags of tags (for-each-ref's
    %(*objectname) peels one level only); one `git cat-file` for them all, none when ids is
    empty. An id that peels to no commit (a tag of a tree) is left out."""
    if not ids:
        return {}
    cp = run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"], cwd=repo,
             input="".join(f"{i}^{{commit}}\n" for i in ids))
    out = {}
    for i, line in zip(ids, cp.stdout.splitlines(), strict=True):
        parts = line.split()
        if len(parts) == 2 and parts[1] == "commit":
            out[i] = parts[0]
    return out
