"""`experiments.py list` repeated on an unchanged history: answered from one small file,
before argparse, git or the rest of _evlib is imported (start-up is most of its cost).

A list's answer is a function of: the tags (names, targets, messages: git objects, so the
ref values name them exactly), what each tag's commit records (content-addressed: the
summary cache), ev.yaml, the git config, the environment and the bundle's code. `state()`
reads all of that directly, without starting git: the refs as git's files backend keeps
them (packed-refs and the loose files under refs/, in the common dir for a worktree),
the config files, ev.yaml, the code's stat. The answer of each exact command (cwd + argv)
is stored under the digest of that state; `serve` prints it only when the digest is the
same again. Anything this module cannot read as git would (reftable refs, GIT_DIR and
friends, include.path in a config, a bare or foreign-owned repository, an unreadable
file) means no fast path: the full list runs, and stores its answer for the next one.

Why branch values are left out: `list` reads refs/tags only; other refs matter only by
name (`%(refname:short)` says tags/X when a branch or remote X exists), so every ref's
name is in the digest, and every value but a branch's or remote branch's (tags, replace
refs, notes, stash); of those only whether they hold an object id (so a commit does not
invalidate it). Stored only when every version's
summary came from its tag's own DB object: an answer that read the working-tree DB (a tag
without a DB, a DB object missing everywhere) is never served from here.

The file is `.dvc/tmp/ev-list.txt` (next to the summary cache, per worktree), replaced
atomically; an unreadable or foreign file is ignored and rebuilt.
"""

from __future__ import annotations

import os
import sys

try:  # blake2b without hashlib's OpenSSL import (a few ms of a ~15 ms answer)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

NAME = "ev-list.txt"
HEADER = b"ev-list 1 "
MAX_ENTRIES = 8  # answers kept per state (cwd x argv variants: --json, --sort, --kind)
# Set: git would find, read or name refs differently than this module reads them.
REFUSE_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES",
              "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_NAMESPACE", "GIT_REPLACE_REF_BASE",
              "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")
# Which git and dvc programs run, tracebacks on errors, whether listcold may answer: not
# the answer.
IGNORED_ENV = ("EV_GIT", "EV_DVC", "EV_TRACEBACK", "EV_LIST_COLD")
EVLIB = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(EVLIB), "experiments.py")


class Loc:
    """Where a repository's pieces are: work tree top, its git dir, the common dir."""

    def __init__(self, top: str, gitdir: str, common: str):
        self.top, self.gitdir, self.common = top, gitdir, common
        self.file = os.path.join(top, ".dvc", "tmp", NAME)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _repo_arg(argv: list[str]) -> tuple[bool, str | None]:
    """(understood, --repo's value). Not understood: an abbreviation (--rep), '--', or
    --repo without a value: argparse decides those, the slow path runs."""
    value = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return False, None
        if a == "--repo":
            if i + 1 >= len(argv):
                return False, None
            value = argv[i + 1]
            i += 2
            continue
        if a.startswith("--repo="):
            value = a[len("--repo="):]
        elif a.startswith("--r"):
            return False, None
        i += 1
    return True, value


def locate(argv: list[str]) -> Loc | None:
    """The repository `git rev-parse --show-toplevel` finds for this command, found the way
    git's discovery does (nearest .git upwards, same filesystem), or None if unsure."""
    env = os.environ
    if env.get("EV_HISTORY_CACHE") == "0" or any(k in env for k in REFUSE_ENV):
        return None
    ok, repo = _repo_arg(argv)
    if not ok:
        return None
    d = os.path.realpath(repo or os.getcwd())
    try:
        dev = os.stat(d).st_dev
    except OSError:
        return None
    while True:
        dotgit = os.path.join(d, ".git")
        if os.path.isdir(dotgit):
            gitdir = dotgit
            break
        if os.path.isfile(dotgit):
            raw = _read(dotgit) or b""
            if not raw.startswith(b"gitdir: "):
                return None
            gitdir = os.path.realpath(os.path.join(d, os.fsdecode(raw[8:].strip())))
            break
        if os.path.isfile(os.path.join(d, "HEAD")) and os.path.isdir(os.path.join(d, "refs")):
            return None  # inside a git dir itself (bare, or .git/...): git decides
        parent = os.path.dirname(d)
        if parent == d or os.stat(parent).st_dev != dev:
            return None
        d = parent
    if not os.path.isfile(os.path.join(gitdir, "HEAD")):
        return None
    cd = _read(os.path.join(gitdir, "commondir"))
    common = os.path.realpath(os.path.join(gitdir, os.fsdecode(cd.strip()))) if cd else gitdir
    if not (os.path.isdir(os.path.join(common, "refs"))
            and os.path.isdir(os.path.join(common, "objects"))):
        return None
    uid = os.geteuid()
    if os.stat(d).st_uid != uid or os.stat(gitdir).st_uid != uid:
        return None  # git's safe.directory check would decide
    if not os.path.isdir(os.path.join(d, ".dvc")):
        return None  # no summary cache without DVC: nothing to serve
    return Loc(d, gitdir, common)


def _loose(root: str, rel: str, out: list) -> None:
    try:
        it = os.scandir(root)
    except FileNotFoundError:
        return
    with it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                _loose(e.path, f"{rel}{e.name}/", out)
            else:
                out.append((f"{rel}{e.name}", e.path))


_HEX = frozenset(b"0123456789abcdef")


def _ref_piece(name: str, path: str) -> bytes:
    data = _read(path)
    if data is None:  # removed while listing: a different state from the one just seen
        raise OSError(f"{path} vanished")
    if name.startswith(("refs/heads/", "refs/remotes/")):
        oid = data.rstrip(b"\n")
        if len(oid) in (40, 64) and _HEX.issuperset(oid):
            data = b"oid"  # a branch's value moves with every commit; only its name counts
    return name.encode("utf-8", "surrogateescape") + b"\0" + data


def state(loc: Loc) -> str | None:
    """Digest of everything a list's answer depends on besides content-addressed objects;
    None when something is not readable the way git reads it (then: no fast path)."""
    h = blake2b(digest_size=20)

    def add(piece: bytes | None) -> None:
        piece = b"\xff-" if piece is None else piece
        h.update(len(piece).to_bytes(8, "little"))
        h.update(piece)

    enc = os.fsencode
    add(sys.version.encode())
    for p in (loc.top, loc.gitdir, loc.common):
        add(enc(p))
    env = os.environ
    for k in sorted(env):
        if (k.startswith("GIT_") or k.startswith("EV_")) and k not in IGNORED_ENV:
            add(enc(k) + b"=" + enc(env[k]))
    # the code that computes the answer, by mtime and size (what Python's .pyc check uses)
    st = os.stat(SCRIPT)
    add(b"%d %d" % (st.st_mtime_ns, st.st_size))
    with os.scandir(EVLIB) as it:
        code = sorted((e.name, e.stat()) for e in it if e.name.endswith(".py"))
    for name, st in code:
        add(b"%s %d %d" % (name.encode(), st.st_mtime_ns, st.st_size))
    add(_read(os.path.join(loc.top, "ev.yaml")))
    # git config: the repository's files by content, the user's and system's by stat
    for p in (os.path.join(loc.common, "config"), os.path.join(loc.gitdir, "config.worktree")):
        data = _read(p)
        if data is not None:
            low = data.lower()
            if b"include" in low or b"reftable" in low:
                return None
        add(data)
    home = env.get("HOME")
    if not home:
        return None
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    user = [env["GIT_CONFIG_GLOBAL"]] if env.get("GIT_CONFIG_GLOBAL") else \
        [os.path.join(xdg, "git", "config"), os.path.join(home, ".gitconfig")]
    for p in (*user, env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig"):
        add(enc(p))
        try:
            s = os.stat(p)
            add(b"%d %d %d" % (s.st_ino, s.st_mtime_ns, s.st_size))
        except FileNotFoundError:
            add(None)
    # refs, as the files backend keeps them: loose first, then packed-refs, git's own order
    # (pack-refs writes packed-refs before it deletes the loose files, so a ref being packed
    # is seen in one or the other, never in neither)
    if os.path.isdir(os.path.join(loc.common, "reftable")):
        return None
    refs: list = []
    _loose(os.path.join(loc.common, "refs"), "refs/", refs)
    if loc.gitdir != loc.common:  # a worktree's own refs (refs/worktree, refs/bisect)
        _loose(os.path.join(loc.gitdir, "refs"), "wt:refs/", refs)
    for name, path in sorted(refs):
        add(_ref_piece(name, path))
    add(_read(os.path.join(loc.common, "packed-refs")))
    return h.hexdigest()


def _key(argv: list[str]) -> bytes:
    return "\0".join([os.getcwd(), *argv]).encode("utf-8")


def _entries(data: bytes | None, digest: str) -> dict[bytes, tuple[bytes, bytes]]:
    """The answers stored under digest ({} if the file is missing, foreign or of another
    state)."""
    if not data or not data.startswith(HEADER + digest.encode() + b"\n"):
        return {}
    pos = len(HEADER) + len(digest) + 1
    out = {}
    while pos < len(data):
        nl = data.index(b"\n", pos)
        head = data[pos:nl].split(b" ")
        if len(head) != 4 or head[0] != b"E":
            return {}
        k, o, e = (int(x) for x in head[1:])
        start = nl + 1
        end = start + k + o + e
        if end > len(data):
            return {}
        out[data[start:start + k]] = (data[start + k:start + k + o], data[start + k + o:end])
        pos = end
    return out


def serve(argv: list[str]) -> bool:
    """Print this exact command's stored answer (stdout and stderr) if the state it was
    computed in is the current one; False: run the full command."""
    if "list" not in argv:
        return False
    try:
        loc = locate(argv)
        if loc is None:
            return False
        data = _read(loc.file)
        if not data:
            return False
        digest = state(loc)
        if digest is None:
            return False
        got = _entries(data, digest).get(_key(argv))
        if got is None:
            return False
        out, err = got[0].decode("utf-8"), got[1].decode("utf-8")
        # what print() would fail on, the full command reports (as its one-line error)
        out.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")
        err.encode(sys.stderr.encoding or "utf-8", sys.stderr.errors or "strict")
    except Exception:  # noqa: BLE001 - whatever it could not read: the full list decides
        return False
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
    from . import pipe

    old = pipe.install()  # a reader that closed stdout: still exit 0 (pipe.py)
    sys.stdout.write(out)
    pipe.finish(old)
    return True


class Recorder:
    """The slow path's side: the state before the list read anything, and after. The
    answer is stored only if both are the same (nothing changed while it ran)."""

    def __init__(self, argv: list[str], repo) -> None:
        self.argv = argv
        self.loc = None
        self.digest = None
        try:
            loc = locate(argv)
            if loc is not None and os.path.samefile(loc.top, repo):
                self.loc, self.digest = loc, state(loc)
        except Exception:  # noqa: BLE001 - a cache: the list itself goes on
            self.loc = self.digest = None

    def store(self, out: str, err: str) -> None:
        if self.digest is None:
            return
        try:
            if state(self.loc) != self.digest:
                return
            key = _key(self.argv)
            o, e = out.encode("utf-8"), err.encode("utf-8")
            old = _entries(_read(self.loc.file), self.digest)
        except Exception:  # noqa: BLE001 - a cache: the answer was printed already
            return
        old.pop(key, None)
        keep = list(old.items())[-(MAX_ENTRIES - 1):] + [(key, (o, e))]
        parts = [HEADER + self.digest.encode() + b"\n"]
        for k, (o2, e2) in keep:
            parts += [b"E %d %d %d\n" % (len(k), len(o2), len(e2)), k, o2, e2]
        from .atomic import write_bytes

        try:
            write_bytes(self.loc.file, b"".join(parts), durable=False)
        except OSError:
            pass  # a cache: failing to write it only costs the next list its speed-up
