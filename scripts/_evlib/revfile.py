"""A file as of a git revision: the ONE primitive behind history, models, rollback and get.

    with RevFiles(repo) as rf:
        outs = rf.outs_at("e0.2.0")                 # DVC outputs recorded at a revision
        rf.prefetch([("e0.1.0", "results/experiments.db"), ("e0.2.0", "models/model.bin")])
        res = rf.write("e0.2.0", "models/model.bin", dest)   # {"md5", "source"}
        res = rf.write_object(md5, dest)            # by md5 (a ledger entry names one)
        path = rf.object_path(md5)                  # the verified cache object, to read only

    file_at(repo, rev, path, dest) / object_to(repo, md5, dest) / cached_object(repo, md5):
    one-shot forms (the last: the cache object's path and where it came from).

Where the bytes come from, in order: the DVC cache ("cache"); else the DVC remote, fetched
INTO the cache (so the next read is a cache hit) in one batch for everything prefetch()
was given ("remote"); a git-tracked file comes from git ("git"). Every object is checked
against its md5 before it is used; a damaged cache object is refused, never replaced.
The remote is read through DVC's own Python API (one Repo, one remote ODB, one transfer)
unless it is a plain local directory configured in the repository's own config files
with no options: then the objects are copied from its files/md5 layout directly (what
DVC's local filesystem does, without its ~0.3 s import). Objects written into the cache
are fsynced before they are renamed into place: DVC itself never hashes a cache object it
finds, so one torn by a power cut would be checked out as is.

Git is read in a handful of processes whatever the number of revisions: one long-lived
`git cat-file --batch` serves every tree and every .dvc / dvc.lock blob at every revision
(trees and blobs are memoised by object id, so tags sharing a tree cost nothing more). The
DVC repository object (and its remote connection) is made once, only if something is
missing from the cache. The remote is the repository's default remote as configured now
(.dvc/config + config.local), not as configured at the revision.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .dvcmeta import Out, cache_dir, dir_entries, find_object, hash_copy, local_remote, object_path
from .errors import FAILED, NOT_FOUND, USAGE, EVError
from .gittree import inside_repo, meta_files, outs_of
from .plain import plain
from .proc import git_popen


@plain
class Located:
    """What a repo path names at a revision."""
    out: Out | None  # the DVC output covering the path (None: not DVC-tracked)
    rel: str  # the path inside out ('' when the path is the output itself)
    md5: str | None  # the file's DVC md5 (None: inside a directory whose listing is missing)


class _CatFile:
    """One `git cat-file --batch` process answering many object requests."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.proc = None

    def get(self, name: str) -> tuple[str, str, bytes] | None:
        """(object id, type, content) of the object name names, or None if none."""
        if "\n" in name:
            return None
        if self.proc is None:
            self.proc = git_popen(self.repo, "cat-file", "--batch")
        p = self.proc
        try:
            p.stdin.write(name.encode("utf-8", "surrogateescape") + b"\n")
            p.stdin.flush()
            line = p.stdout.readline().decode("utf-8", "replace").rstrip("\n")
        except (BrokenPipeError, OSError) as exc:
            raise EVError(f"git cat-file stopped while reading {name}", code=FAILED,
                          hint="check the repository with `git fsck`, then retry") from exc
        if not line:
            raise EVError(f"git cat-file stopped while reading {name}", code=FAILED,
                          hint="check the repository with `git fsck`, then retry")
        # "<name> missing" / "<name> ambiguous" (the name may hold spaces), else
        # "<id> <type> <size>"
        if line.endswith((" missing", " ambiguous")):
            return None
        header = line.split()
        if len(header) != 3 or not header[2].isdigit():
            return None
        size = int(header[2])
        data = p.stdout.read(size + 1)[:size]
        return header[0], header[1], data

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


class RevFiles:
    """Files as of revisions, read with one git process and (if needed) one DVC repo."""

    def __init__(self, repo: Path, *, remote: str | None = None):
        self.repo = Path(repo)
        self.remote = remote
        self.git = _CatFile(self.repo)
        self._metas: dict[str, list[tuple[str, str]]] = {}  # tree+prefix -> [(path, blob)]
        self._outs_by_blob: dict[tuple[str, str], list[Out]] = {}
        self._outs: dict[str, dict[str, Out]] = {}  # rev -> outs
        self._cache: Path | None = None
        self._dvc = None  # dvc.repo.Repo, made on first remote fetch
        self._verified: set[Path] = set()
        self._local: Path | None | bool = False  # False: not looked up yet
        self.fetched: list[str] = []  # md5s brought from the remote (for reports/benches)

    # --- lifecycle ---
    def __enter__(self) -> RevFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.git.close()
        if self._dvc is not None:
            self._dvc.close()
            self._dvc = None

    @property
    def cache(self) -> Path:
        if self._cache is None:
            self._cache = cache_dir(self.repo)
        return self._cache

    # --- git side ---
    def blob(self, rev: str, path: str) -> bytes | None:
        """Bytes of a git-tracked file at rev (None if rev has no such file)."""
        got = self.git.get(f"{rev}:{path}")
        return got[2] if got and got[1] == "blob" else None

    def _meta_files(self, tree: str, prefix: str, got=None) -> list[tuple[str, str]]:
        """(repo path, blob id) of every .dvc file and dvc.lock under tree (memoised)."""
        return meta_files(tree, prefix, self.git.get, self._metas, got)

    def outs_at(self, rev: str) -> dict[str, Out]:
        """DVC outputs recorded at rev (a tag, branch or commit): {} if it tracks none.

        NOT_FOUND if rev names no commit."""
        if rev in self._outs:
            return self._outs[rev]
        got = None if rev.startswith("-") else self.git.get(f"{rev}^{{tree}}")
        if got is None:
            raise EVError(f"{rev!r} names no commit in this repository", code=NOT_FOUND,
                          hint="list versions with experiments.py list (or git tag -l 'e*')")
        outs = outs_of(self._meta_files(got[0], "", got), self._text, self._outs_by_blob)
        self._outs[rev] = outs
        return outs

    def _text(self, blob_id: str) -> str:
        data = self.git.get(blob_id)
        return data[2].decode("utf-8", "replace") if data else ""

    def locate(self, rev: str, path: str) -> Located:
        """The DVC output covering path at rev, and the file's md5 (through a directory
        output's listing, read from the cache; prefetch() brings missing listings)."""
        for p, o in self.outs_at(rev).items():
            if path == p:
                return Located(o, "", o.md5)
            if path.startswith(p + "/"):
                rel = path[len(p) + 1:]
                return Located(o, rel, self._md5_in_listing(o, rel))
        return Located(None, path, None)

    def _md5_in_listing(self, out: Out, rel: str) -> str | None:
        listing = self._cached(out.md5, out.legacy)
        if listing is None:
            return None
        return dict(dir_entries(listing) or []).get(rel)

    # --- objects: cache, else remote ---
    def _present(self, md5: str, legacy: bool = False) -> Path | None:
        """The cache object's file for md5, if present (not verified)."""
        return find_object(self.cache, md5)

    def _cached(self, md5: str, legacy: bool = False) -> Path | None:
        """The cache object for md5 if present and its content matches md5 (hashed once
        per process). A damaged object raises: it is never silently used or replaced."""
        from .atomic import md5_file

        p = self._present(md5, legacy)
        if p is None or p in self._verified:
            return p
        got = md5_file(p)
        if got != md5.replace(".dir", ""):
            raise EVError(f"DVC cache object {p} is damaged (its md5 is {got}, not {md5})",
                          hint=f"remove it (rm {p}) and rerun: it is then fetched from the "
                               "remote")
        self._verified.add(p)
        return p

    def prefetch(self, items) -> None:
        """Bring into the cache, in one remote batch, the objects of every (rev, path) in
        items that the cache lacks. Never raises for a missing object: write() does."""
        want: dict[str, bool] = {}  # md5 -> legacy
        dirs: dict[str, bool] = {}
        for rev, path in items:
            loc = self.locate(rev, path)
            if loc.out is None:
                continue
            if loc.md5 is None:
                dirs[loc.out.md5] = loc.out.legacy
            elif self._present(loc.md5) is None:
                want[loc.md5] = loc.out.legacy
        if dirs:
            self._pull(dirs, listings_only=True)
            for rev, path in items:  # now the listings name the files' md5s
                loc = self.locate(rev, path)
                if loc.out is not None and loc.md5 and self._present(loc.md5) is None:
                    want[loc.md5] = loc.out.legacy
        if want:
            self._pull(want)

    def _repo(self):
        if self._dvc is None:
            try:
                from dvc.repo import Repo
            except ImportError as exc:
                raise EVError("dvc is not installed in this Python environment", code=FAILED,
                              hint="install the bundle's dependencies (pip install dvc)"
                              ) from exc
            self._dvc = Repo(str(self.repo))
        return self._dvc

    def _local_remote(self) -> Path | None:
        """The default remote's directory when it is a plain local directory (dvcmeta's
        local_remote); else None (DVC's API then resolves it: S3, global config, options)."""
        if self._local is False:
            self._local = local_remote(self.repo, self.remote)
        return self._local

    def _pull_local(self, remote: Path, want: dict[str, bool]) -> None:
        """Copy objects from a local-directory remote into the cache, md5-checked, as DVC
        lays them out (read-only files)."""
        for md5, legacy in sorted(want.items()):
            src = object_path(remote, md5, legacy)
            if not src.is_file():
                continue
            dest = object_path(self.cache, md5, legacy)
            # read-only, as DVC protects its cache objects
            with atomic_path(dest, mode=0o444) as tmp:  # fsynced: DVC never re-hashes it
                got = hash_copy(src, tmp)
                if got != md5.replace(".dir", ""):
                    raise EVError(f"the remote's object {src} is damaged (its md5 is "
                                  f"{got}); nothing was written to the cache",
                                  hint="dvc push from a machine with a good copy, then retry")
            self._verified.add(dest)
            self.fetched.append(md5)

    def _pull(self, want: dict[str, bool], listings_only: bool = False) -> None:
        """Fetch objects from the default remote into the cache (one batch per layout)."""
        local = self._local_remote()
        if local is not None:
            self._pull_local(local, want)
            return
        from dvc.config import NoRemoteError, RemoteConfigError

        repo = self._repo()
        try:
            for legacy in (False, True):
                md5s = sorted(m for m, lg in want.items() if lg == legacy)
                if not md5s:
                    continue
                odb = repo.cloud.get_remote_odb(
                    self.remote, "pull", hash_name="md5-dos2unix" if legacy else "md5")
                if listings_only:
                    # only the listing: transferring a .dir object would bring every file
                    for m in md5s:
                        self._copy_listing(odb, m, legacy)
                    continue
                from dvc_data.hashfile.hash_info import HashInfo

                objs = [HashInfo(odb.hash_name, m) for m in md5s]
                res = repo.cloud.pull(objs, odb=odb)
                self.fetched += [h.value for h in res.transferred]
        except (NoRemoteError, RemoteConfigError) as exc:
            raise EVError(f"no usable DVC remote: {' '.join(str(exc).split())}",
                          code=NOT_FOUND, hint="dvc remote add -d NAME URL (the remote the "
                                               "versions were pushed to), then retry") from exc

    def _copy_listing(self, odb, md5: str, legacy: bool) -> None:
        src = odb.oid_to_path(md5)
        dest = object_path(self.cache, md5, legacy)
        try:
            with odb.fs.open(src, "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, OSError):
            return
        import hashlib

        if hashlib.md5(data).hexdigest() != md5.replace(".dir", ""):  # noqa: S324
            return
        with atomic_path(dest, mode=0o444) as tmp:  # fsynced: DVC never re-hashes it
            tmp.write_bytes(data)
        self.fetched.append(md5)

    def object_path(self, md5: str, legacy: bool = False) -> Path:
        """The verified cache object for md5, fetched from the remote if missing. Read it,
        never write it (a link-type checkout may share its inode with a working file)."""
        p = self._cached(md5, legacy)
        if p is None:
            self._pull({md5: legacy})
            p = self._cached(md5, legacy)
        if p is None:
            raise EVError(f"object {md5} is in neither the local DVC cache nor the remote",
                          code=NOT_FOUND, hint="dvc push from the machine that made it, or "
                                               "check the remote (dvc remote list)")
        return p

    def write_object(self, md5: str, dest: Path, legacy: bool = False, *,
                     scratch: bool = False) -> dict:
        """Write object md5's bytes to dest, hashing while copying (the object is read
        once): atomically, or with scratch=True as a new file in a private temp folder (no
        fsync: it is read and deleted by this process). {"md5", "source": cache|remote}."""
        obj = self._present(md5, legacy)
        if obj is None:
            obj = self.object_path(md5, legacy)
        # fetched by this process (by prefetch or just now): it came from the remote
        source = "remote" if md5 in self.fetched else "cache"
        if scratch and obj in self._verified:
            # hashed by this process already (just fetched, or read before): a plain copy
            with _scratch(dest) as tmp:  # (not shutil: its import is ~4 ms of a list)
                with open(obj, "rb") as fi, open(tmp, "xb") as fo:
                    while chunk := fi.read(1 << 20):
                        fo.write(chunk)
            return {"md5": md5, "source": source}
        ctx = _scratch(dest) if scratch else atomic_path(dest)
        with ctx as tmp:
            got = hash_copy(obj, tmp)
            if got != md5:
                raise EVError(f"DVC cache object {obj} is damaged (its md5 is "
                              f"{got}, not {md5}); nothing was written",
                              hint=f"remove it (rm {obj}) and rerun: it is then fetched "
                                   "from the remote")
        self._verified.add(obj)
        return {"md5": md5, "source": source}

    def write(self, rev: str, path: str, dest: Path, *, scratch: bool = False) -> dict:
        """Write path as of rev to dest atomically; the working tree is never touched.

        {"md5", "source": cache|remote|git}. NOT_FOUND when rev tracks no such file or its
        object is neither in the cache nor on the remote."""
        if not inside_repo(path):
            raise EVError(f"{path} is outside the repository", code=USAGE,
                          hint="give a repo-relative path inside the repository")
        loc = self.locate(rev, path)
        if loc.out is None:
            data = self.blob(rev, path)
            if data is None:
                raise EVError(f"{path} is not tracked (by DVC or git) at {rev}",
                              code=NOT_FOUND,
                              hint=f"see the tracked artifacts with experiments.py show {rev}")
            with (_scratch(dest) if scratch else atomic_path(dest)) as tmp:
                tmp.write_bytes(data)
            import hashlib

            return {"md5": hashlib.md5(data).hexdigest(), "source": "git"}  # noqa: S324
        if loc.out.is_dir and not loc.rel:
            raise EVError(f"{path} is a directory at {rev}", code=USAGE,
                          hint="name one file inside it")
        if loc.md5 is None:
            self.prefetch([(rev, path)])
            loc = self.locate(rev, path)
            if loc.md5 is None:
                raise EVError(f"{path} at {rev}: the listing of {loc.out.path} is in "
                              "neither the local cache nor the remote, or does not name it",
                              code=NOT_FOUND, hint="dvc push from the machine that made it, "
                                                   "or check the remote")
        return self.write_object(loc.md5, dest, loc.out.legacy, scratch=scratch)


@contextlib.contextmanager
def _scratch(dest: Path):
    """A new file at dest (which must not exist), removed if the block fails."""
    dest = Path(dest)
    try:
        yield dest
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def atomic_path(dest, **kw):
    """_evlib.atomic's, imported when first written (a cached `list` writes nothing)."""
    from .atomic import atomic_path as _atomic_path

    return _atomic_path(dest, **kw)


def file_at(repo: Path, rev: str, path: str, dest: Path) -> dict:
    """One file as of rev to dest: {"md5", "source"} (see RevFiles.write)."""
    with RevFiles(repo) as rf:
        return rf.write(rev, path, dest)


def cached_object(repo: Path, md5: str, legacy: bool = False) -> tuple[Path, str]:
    """(the verified cache object for md5, "cache" or "remote"): fetched from the default
    remote INTO the cache when missing. Read it, never write into it."""
    with RevFiles(repo) as rf:
        path = rf.object_path(md5, legacy)
        return path, "remote" if md5 in rf.fetched else "cache"


def object_to(repo: Path, md5: str, dest: Path, legacy: bool = False) -> dict:
    """DVC object md5's bytes to dest: {"md5", "source"} (see RevFiles.write_object)."""
    with RevFiles(repo) as rf:
        return rf.write_object(md5, dest, legacy)
