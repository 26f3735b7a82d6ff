"""A first `experiments.py list` (no answer of listfast's yet), in one short process: what a
teammate's fresh clone does, where the DB objects are only on the DVC remote.

Taken only when the command is plain (`list`, with or without --json), there is no ev.yaml
(the settings are the defaults) and every answer it needs is one it can read exactly as the
full `list` reads it; in any doubt it returns False before writing anything and the full
list runs (and reports what this path stepped around: a damaged object, a missing one, a
bad .dvc file). What it does:

- 2 git processes, started at once with os.posix_spawnp, before the rest of this path is
  imported (git starts up on the other core meanwhile; the Recorder's state is taken
  first): `for-each-ref refs/tags` (the format history.all_tags reads) and one `cat-file
  --batch` that reads every tag's trees and every .dvc blob, in waves (all root trees,
  then their subtrees, ..., then the blobs); the row-making modules are imported while it
  reads the root trees;
- each tag's outputs by gittree's rules (revfile's), its DB object found in the DVC cache
  or a plain local-directory remote (dvcmeta.local_remote, as revfile reads it), its md5
  checked, then opened read-only in place (`immutable`: a content-addressed object);
  nothing is copied into the cache;
- the summary, row and text of the full list (summary.summarize, summary.list_text), the
  JSON through fastjson (json.dumps's own C encoder);
- the answer stored for listfast (Recorder: the state before anything was read, and after)
  when every version came from its tag's own DB object, as the full list does.

Imports only the bundle's small modules (no history, revfile, proc, argparse, subprocess,
json, pathlib, re, configparser: names are matched by evtags and settings, .dvc/config read by
dvcmeta._plain_config, without them; nor the sqlite3 package, datetime, functools,
collections or contextlib: _light_sqlite, sql.sqlite_connect(immutable=True), atomic.py).
Its answer printed, experiments.py exits without the interpreter's teardown when that
would do nothing visible (pipe.exit_now).
"""

from __future__ import annotations

import os
import sys

from . import listfast

TYPE_CHECKING = False  # the rest of the bundle's modules: imported while git starts (serve)
if TYPE_CHECKING:
    from . import dvcmeta, evtags, gittree, summary
    from .runs import load_runs
    from .settings import Settings

PLAIN = (["list"], ["--json", "list"], ["list", "--json"])
PROG = "experiments.py"
SMALL_REQUEST = 4096


class _Doubt(Exception):
    """Something this path does not read exactly as the full list: run that instead."""


def _env() -> dict:
    env = dict(os.environ)  # proc._env's: never prompt, no DVC analytics
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


class _Git:
    """One git process with its stdout (and, for cat-file, its stdin) on pipes."""

    def __init__(self, top: str, args: list[str], stdin: bool):
        git = os.environ.get("EV_GIT") or "git"
        out_r, out_w = os.pipe()
        acts = [(os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
        self.stdin = None
        if stdin:
            in_r, in_w = os.pipe()
            acts.append((os.POSIX_SPAWN_DUP2, in_r, 0))
        else:
            acts.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        cwd = os.open(".", os.O_RDONLY)  # posix_spawn has no cwd: git starts in top
        try:
            os.chdir(top)
            try:
                self.pid = os.posix_spawnp(git, [git, *args], _env(), file_actions=acts)
            finally:
                os.fchdir(cwd)
        finally:
            os.close(cwd)
            os.close(out_w)
            if stdin:
                os.close(in_r)
        self.stdout = out_r
        if stdin:
            self.stdin = in_w
        self.buf = bytearray()

    def read_all(self) -> bytes:
        chunks = [bytes(self.buf)]
        while chunk := os.read(self.stdout, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self, kill: bool = False) -> int:
        """Its exit code, once it ended; kill: stop it first (an answer not wanted)."""
        if kill and self.pid:
            os.kill(self.pid, 9)  # SIGKILL, without importing signal; not yet waited for
        for fd in (self.stdin, self.stdout):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.stdin = self.stdout = None
        pid, self.pid = self.pid, 0
        if not pid:
            return -9
        _pid, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)


def _batch(cat: _Git, names: list[str], meanwhile=None) -> list[tuple[str, str, bytes] | None]:
    """cat-file --batch's answer for each name, writing and reading at once (select), so
    that neither side's pipe fills up while the other waits. A request of at most one page
    goes in one write without select: every earlier request was answered in full, so the
    stdin pipe is empty, and an empty pipe takes a page (Linux's smallest pipe buffer)
    without blocking whatever git does. meanwhile(): called once the request is written
    (in full, if it is small), while git answers."""
    req = b"".join(n.encode("utf-8", "surrogateescape") + b"\n" for n in names)
    got: list = []
    buf, sent = cat.buf, 0
    if len(req) <= SMALL_REQUEST:
        sent = os.write(cat.stdin, req)
    if sent < len(req):
        import select
    if meanwhile is not None:
        meanwhile()
    while len(got) < len(names):
        readable = writable = True
        if sent < len(req):
            readable, writable, _ = select.select([cat.stdout], [cat.stdin], [])
            if writable:
                sent += os.write(cat.stdin, req[sent:sent + (1 << 16)])
        if readable:
            chunk = os.read(cat.stdout, 1 << 20)
            if not chunk:
                raise _Doubt("git cat-file stopped")
            buf += chunk
        while len(got) < len(names):  # every complete answer in buf
            nl = buf.find(b"\n")
            if nl < 0:
                break
            head = buf[:nl].decode("utf-8", "replace")
            if head.endswith((" missing", " ambiguous")):
                got.append(None)
                del buf[:nl + 1]
                continue
            parts = head.split()
            if len(parts) != 3 or not parts[2].isdigit():
                raise _Doubt(f"cat-file said {head!r}")
            size = int(parts[2])
            if len(buf) < nl + 2 + size:
                break
            got.append((parts[0], parts[1], bytes(buf[nl + 1:nl + 1 + size])))
            del buf[:nl + 2 + size]
    return got


def _md5_ok(path: str, md5: str) -> bool:
    return dvcmeta.hash_copy(path) == md5


def _db_object(top: str, out, where: dict) -> str:
    """The verified file of the DB output's object: the cache's, else the local remote's."""
    if out.is_dir:
        raise _Doubt("the DB path is a directory output")
    if "cache" not in where:
        where["cache"] = dvcmeta.cache_dir_str(top)
    found = dvcmeta.find_object_file(where["cache"], out.md5)
    if found is None:
        if "remote" not in where:
            where["remote"] = dvcmeta.local_remote_str(top)
        if where["remote"] is None:
            raise _Doubt("no local-directory remote")
        found = dvcmeta.object_file(where["remote"], out.md5, out.legacy)
        if not os.path.isfile(found):
            raise _Doubt("missing everywhere")  # the full list warns and reads the tree's
    path = found
    if not _md5_ok(path, out.md5):
        raise _Doubt("damaged object")  # the full list refuses it, in one line
    with open(path, "rb") as fh:
        head = fh.read(100)
    # a rollback-journal SQLite file (a WAL one needs its -wal/-shm: the full list's copy)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0") or head[18:20] != b"\1\1":
        raise _Doubt("not a plain SQLite file")
    return path


def _git_blob_at(root: tuple, objs: dict, rel: str) -> bool:
    """Whether `<tree>:rel` names anything (the full list would read a git-tracked DB)."""
    tree = root
    parts = rel.split("/")
    for i, name in enumerate(parts):
        if tree is None or tree[1] != "tree":
            return False
        hit = next((e for e in gittree.tree_entries(tree[2], len(tree[0]) // 2)
                    if e[1] == name), None)
        if hit is None:
            return False
        if i == len(parts) - 1:
            return True
        if hit[2] not in objs:
            raise _Doubt("tree not read")
        tree = objs[hit[2]]
    return False


def _start(top: str) -> tuple[_Git, _Git]:
    """for-each-ref and cat-file, started before the rest is imported: git starts up on
    the other core meanwhile (cat-file waits for its first request)."""
    from .evtags import FOR_EACH_REF

    refs = _Git(top, ["for-each-ref", "refs/tags", f"--format={FOR_EACH_REF}"], False)
    try:
        cat = _Git(top, ["cat-file", "--batch"], True)
    except BaseException:
        refs.close(kill=True)
        raise
    return refs, cat


def _load() -> None:
    """The modules _answer reads git's answers with."""
    global dvcmeta, evtags, gittree
    from . import dvcmeta, evtags, gittree


def _load_rows() -> None:
    """The modules that make the rows, and SQLite's C module (_light_sqlite): imported
    while cat-file reads the root trees."""
    global load_runs, Settings, summary
    _light_sqlite()
    from . import summary
    from .runs import load_runs
    from .settings import Settings


def _light_sqlite() -> None:
    """Import _sqlite3 (the `sqlite3` package's C module: its connect and Error) without
    functools, whose import pulls collections, types, operator... (~4 ms of a ~45 ms list;
    sqlite3's own datetime, another ~3 ms, is never imported here: sql.py opens an immutable
    object through _sqlite3). _sqlite3 takes one thing from functools when it is loaded,
    lru_cache, for its per-connection statement cache; given a stand-in that caches nothing
    (a connection then compiles each statement it executes: the same rows), it loads
    without it. Only when neither is loaded yet; the stand-in leaves sys.modules at once,
    so a later `import functools` is the real one."""
    if "_sqlite3" in sys.modules or "functools" in sys.modules:
        return
    stand_in = type(sys)("functools")

    def lru_cache(maxsize=128, typed=False):
        return _no_cache

    stand_in.lru_cache = lru_cache
    sys.modules["functools"] = stand_in
    try:
        import _sqlite3  # noqa: F401
    except Exception:  # noqa: BLE001 - the ordinary import then (sql.py), with functools
        sys.modules.pop("_sqlite3", None)
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]


def _no_cache(connection):
    return connection  # a connection called with SQL compiles it: the "cached" statement


def _answer(top: str, want_json: bool, refs: _Git, cat: _Git) -> tuple[str, bool]:
    """(the full list's stdout, whether every version came from its tag's own DB)."""
    try:
        raw = refs.read_all()
        if refs.close() != 0:
            raise _Doubt("for-each-ref failed")
        if b"\r" in raw:  # the full list reads git's output with universal newlines
            raise _Doubt("CR in a tag")
        tags, nested = evtags.parse_refs(raw.decode("utf-8").rstrip("\n"))
        if nested:
            raise _Doubt("a tag of a tag")

        def warn(_msg):
            raise _Doubt("a malformed e-tag (the full list warns)")

        infos = [tags[n] for n in evtags.e_tags(tags, warn)]
        objs: dict[str, tuple | None] = {}
        commits = list(dict.fromkeys(t.commit for t in infos))
        roots = dict(zip(commits, _batch(cat, [f"{c}^{{tree}}" for c in commits],
                                         _load_rows),
                         strict=True))
        if any(r is None or r[1] != "tree" for r in roots.values()):
            raise _Doubt("a tag names no commit")
        wave = []
        for r in roots.values():
            objs[r[0]] = r
            wave += gittree.subtrees(r[0], r[2], "")
        while wave:  # the subtrees gittree.meta_files descends into, a level per batch
            want = list(dict.fromkeys(oid for oid, _p in wave if oid not in objs))
            for oid, got in zip(want, _batch(cat, want), strict=True):
                objs[oid] = got
            nxt = []
            for oid, prefix in wave:
                got = objs[oid]
                if got is not None and got[1] == "tree":
                    nxt += gittree.subtrees(oid, got[2], prefix)
            wave = list(dict.fromkeys(nxt))
        memo: dict = {}
        metas = {c: gittree.meta_files(r[0], "", objs.__getitem__, memo, r)
                 for c, r in roots.items()}
        blobs = list(dict.fromkeys(b for m in metas.values() for _p, b in m if b not in objs))
        for oid, got in zip(blobs, _batch(cat, blobs), strict=True):
            objs[oid] = got
    finally:
        cat.close()  # its stdin closed: it ends

    st = Settings()
    db_rel, metric, mode = st.results_db, st.metric, st.mode

    def text_of(oid):
        got = objs[oid]
        return got[2].decode("utf-8", "replace") if got else ""

    parsed: dict = {}
    where: dict = {}
    own_only, rows = True, []
    for t in infos:
        outs = gittree.outs_of(metas[t.commit], text_of, parsed)
        version = t.lineage.get("version") or t.name
        out = None
        for p, o in outs.items():
            if db_rel == p:
                out = o
                break
            if db_rel.startswith(p + "/"):
                raise _Doubt("the DB inside a directory output")
        runs = []
        if out is not None:
            runs = load_runs(_db_object(top, out, where), version, immutable=True)
        elif _git_blob_at(roots[t.commit], objs, db_rel):
            raise _Doubt("a git-tracked DB")
        if not runs:  # history.Reader._runs: the working-tree DB stands in
            own_only = False
            cur = os.path.join(top, db_rel)
            runs = load_runs(cur, version) if os.path.isfile(cur) else []
        rec = summary.summarize(runs, version, metric, mode).payload()
        rec.pop("params"), rec.pop("metrics")
        rec.update({"tag": t.name, "date": t.date, "commit": t.commit,
                    "data": dvcmeta.data_short(outs), "description": t.description})
        rows.append(rec)
    if want_json:
        from .fastjson import dumps_compact

        return dumps_compact({"status": "ok", "versions": rows}) + "\n", own_only
    return summary.list_text(rows) + "\n", own_only


def serve(argv: list[str]) -> bool:
    """Print the full list's answer to this first list and store it for listfast; False
    (nothing printed, nothing written): the full list runs."""
    if argv not in PLAIN or os.environ.get("EV_LIST_COLD") == "0":
        return False
    gits: tuple = ()
    try:
        if not (sys.flags.utf8_mode or _locale_utf8()):
            return False  # the full list decodes git's output in the locale's encoding
        loc = listfast.locate(argv)
        if loc is None or os.path.lexists(os.path.join(loc.top, "ev.yaml")):
            return False
        rec = listfast.Recorder(argv, loc.top)  # the state, before git reads anything
        if not os.path.isdir(os.path.join(loc.top, ".dvc", "cache")):
            from .dvcmeta import local_remote_str

            if local_remote_str(loc.top) is None:  # (an S3 remote, one with options...)
                return False  # no object could be read here: the full list, before any git
        gits = _start(loc.top)
        _load()
        out, own_only = _answer(loc.top, "--json" in argv, *gits)
        out.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")
    except Exception:  # noqa: BLE001 - any doubt: the full list decides (and reports)
        return False
    finally:
        for g in gits:  # ended already when the answer is complete; else stopped
            if g.pid:
                g.close(kill=True)
    from . import pipe

    old = pipe.install()  # a reader that closed stdout: still exit 0 (pipe.py)
    sys.stdout.write(out)
    pipe.finish(old)
    if own_only:
        rec.store(out, "")
    return True


def _locale_utf8() -> bool:
    import _locale

    enc = _locale.getencoding() if hasattr(_locale, "getencoding") else ""
    return enc.lower().replace("-", "").replace("_", "") == "utf8"
