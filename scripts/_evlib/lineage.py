"""The lineage of the runs trained now: the commit, whether the tree is dirty (git, and DVC
outputs), and the md5 of every DVC-tracked input as the run reads it.

Computed once per commit and shared by every run of a sweep; `runner` stamps it on each
run's rows. DVC file outputs are checked in-process (their md5, remembered by inode, size
and mtime in .ev/md5-cache.json, against the .dvc record); `dvc status` is asked only about
folders and DVC 2 hashes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .errors import USAGE, EVError

SANDBOX_ROOT = ".ev"  # (runner.SANDBOX_ROOT)


def _bundle_outputs(s, extra: list[str] = ()) -> list[str]:
    """Paths the bundle itself writes: never inputs, never make a run dirty."""
    db_dir = os.path.dirname(s.results_db) or "."
    return [s.results_db, os.path.join(db_dir, "shards").lstrip("./") or "shards",
            s.candidates_dir, os.path.dirname(s.production_model) or s.production_model,
            SANDBOX_ROOT, "ev.yaml.lock", *extra]


def _under(path: str, roots: list[str]) -> bool:
    path = path.rstrip("/")
    return any(path == r.rstrip("/") or path.startswith(r.rstrip("/") + "/") for r in roots)


def dvc_outs(repo: Path) -> list:
    """Every DVC output recorded in the working tree's .dvc files and dvc.lock files."""
    from .dvcmeta import parse_outs
    from .proc import git

    listed = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                 "--", "*.dvc", "dvc.lock", "**/dvc.lock")
    outs = []
    root = repo.resolve()
    for rel in filter(None, listed.split("\0")):
        if rel.startswith(SANDBOX_ROOT + "/") or not (repo / rel).is_file():
            continue
        for o in parse_outs((repo / rel).read_text(encoding="utf-8", errors="replace"), rel):
            full = (repo / o.path).resolve()
            if full != root and root not in full.parents:
                raise EVError(f"{rel} names an output outside the repository: {o.path}",
                              code=USAGE, hint="fix that .dvc/dvc.lock file; DVC itself "
                              "rejects such paths")
            outs.append(o)
    return outs


def _dvc_changed(repo: Path) -> dict[str, str]:
    """{output path: change} for DVC outputs whose workspace differs from what DVC recorded."""
    from .proc import dvc_run

    cp = dvc_run(repo, "status", "--json")
    if cp.returncode != 0:
        raise EVError(f"dvc status failed: {(cp.stderr or cp.stdout).strip().splitlines()[-1:]}",
                      hint="run dvc status in the repository and fix what it reports")
    try:
        data = json.loads(cp.stdout or "{}")
    except ValueError:
        return {}
    changed: dict[str, str] = {}
    for stage, items in (data or {}).items():
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            for kind in ("changed outs", "changed deps"):
                for p, what in (item.get(kind) or {}).items():
                    changed[p] = str(what)
            if "changed checksum" in item:
                changed[stage] = "changed checksum"
    return changed


MD5_CACHE = f"{SANDBOX_ROOT}/md5-cache.json"


def _files_changed(repo: Path, outs: list, md5s: dict | None = None
                   ) -> dict[str, str] | None:
    """{path: change} for DVC file outputs, in-process: the md5 of each file (remembered by
    inode, size and mtime, like DVC's own state) against its .dvc record. None when an
    output is a folder or has a DVC 2 hash (then `dvc status` decides)."""
    from .atomic import md5_file, write_text

    if any(o.is_dir or o.legacy for o in outs):
        return None
    cache_path = repo / MD5_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed, dirty = {}, False
    for o in outs:
        f = repo / o.path
        try:
            st = f.stat()
        except FileNotFoundError:
            changed[o.path] = "deleted"
            continue
        sig = [st.st_ino, st.st_size, st.st_mtime_ns]
        hit = cache.get(o.path)
        if hit and hit[:3] == sig:
            md5 = hit[3]
        else:
            md5 = md5_file(f)
            cache[o.path] = [*sig, md5]
            dirty = True
        if md5s is not None:
            md5s[o.path] = md5
        if md5 != o.md5:
            changed[o.path] = "modified"
    if dirty and cache_path.parent.is_dir():  # only where runs happen: a dry run adds nothing
        with contextlib.suppress(OSError):
            write_text(cache_path, json.dumps(cache, sort_keys=True), durable=False)
    return changed


def lineage(repo: Path, s=None, *, extra_outputs: list[str] = ()) -> dict:
    """The lineage every run trained now shares: ev_commit, ev_dirty, ev_data_md5.

    ev_dirty is true when git shows uncommitted changes or DVC shows a tracked input that
    differs from its .dvc record (the bundle's own outputs excluded: results DB, shards,
    candidates, production). ev_data_md5 maps every DVC-tracked input to the md5 of the data
    the run reads: DVC's recorded md5 when unchanged, the file's own md5 when it changed.
    """
    from . import settings as settings_mod
    from .atomic import md5_file
    from .repo import dirty_paths, head_commit

    s = s or settings_mod.load(repo)
    own = _bundle_outputs(s, list(extra_outputs))
    dirty = [p for p in dirty_paths(repo) if not _under(p.strip('"'), own)]
    outs = [o for o in dvc_outs(repo) if not _under(o.path, own)]
    md5s: dict[str, str] = {}
    changed = (_files_changed(repo, outs, md5s) if outs else {})
    if changed is None:  # folders or DVC 2 hashes: ask DVC
        changed = _dvc_changed(repo)
    data: dict[str, str] = {}
    for o in sorted(outs, key=lambda o: o.path):
        if o.path in changed and not o.is_dir and (repo / o.path).is_file():
            data[o.path] = md5s.get(o.path) or md5_file(repo / o.path)
        elif o.path in changed:
            data[o.path] = f"{o.md5} ({changed[o.path]})"
        else:
            data[o.path] = o.md5
    dvc_dirty = sorted(p for p in changed if not _under(p, own)
                       and not _under(p.removesuffix(".dvc"), own))
    return {"ev_commit": head_commit(repo), "ev_dirty": bool(dirty or dvc_dirty),
            "ev_data_md5": json.dumps(data, sort_keys=True),
            "dirty_paths": dirty + [f"{p} (dvc)" for p in dvc_dirty]}


