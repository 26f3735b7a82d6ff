"""The one place that reads DVC's own files: `.dvc` files, `dvc.lock`, DVC's config (system,
global, .dvc/config, .dvc/config.local: the cache's location, the default remote) and the
object layout. Reading them directly costs microseconds where a `dvc` call costs ~0.4 s, and
works at any git revision.

Every output path is checked to stay inside the repository (DVC itself refuses the others):
a crafted `path: ../victim.txt`, an absolute path or a path through a symlink that leaves the
repository raises EVError with exit code 2, so nothing outside is ever read, copied or chmod-ed.
"""

from __future__ import annotations

import os

from .errors import USAGE, EVError
from .plain import plain

TYPE_CHECKING = False  # pathlib (~5 ms) is imported where a Path is handed out (_path)
if TYPE_CHECKING:
    from pathlib import Path


@plain
class Out:
    path: str  # repo-relative, "/"-separated
    md5: str  # DVC md5 ("....dir" for a directory)
    source: str  # the .dvc file or dvc.lock that records it (repo-relative)
    legacy: bool = False  # DVC 2 layout (cache/xx/rest) rather than cache/files/md5/xx/rest

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")

    @property
    def short(self) -> str:
        return self.md5.replace(".dir", "")[:6]


# What `dvc add` writes, read without importing yaml (~15 ms of a fresh list): exactly
# "outs:" then items of "key: value" lines with values YAML reads as these same strings
# or ints. Anything else (comments, quotes, other keys, a value YAML would read as a
# number, bool or date) is left to yaml, so the result is always yaml's own.
_DVC_KEYS_STR = ("md5", "hash", "path")
_DVC_KEYS_INT = ("size", "nfiles")
_YAML_WORDS = {"yes", "no", "true", "false", "on", "off", "null"}
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")


def _plain_str(key: str, v: str) -> bool:
    """v is a YAML plain scalar that YAML reads as the string v itself."""
    if not v or not set(v) <= _PLAIN:
        return False
    if key == "md5":
        # hex (+ ".dir"): a string unless all digits or a 0x/0b literal (YAML 1.1 ints);
        # with a hex letter before any "." it is no float, and without ":" no date/time
        h = v[:-4] if v.endswith(".dir") else v
        return len(h) == 32 and set(h) <= set("0123456789abcdef") and \
            not h.isdigit() and not h.startswith(("0x", "0b"))
    return (v[0].isalpha() or v[0] == "_") and v.lower() not in _YAML_WORDS


def _fast_dvc(text: str) -> dict | None:
    """A canonical .dvc file's content as yaml.safe_load reads it, or None: not one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2 or lines[0] != "outs:":
        return None
    outs: list[dict] = []
    for ln in lines[1:]:
        if ln.startswith("- "):
            item: dict = {}
            outs.append(item)
        elif ln.startswith("  ") and outs:
            item = outs[-1]
        else:
            return None
        key, sep, v = ln[2:].partition(": ")
        if not sep or key in item:
            return None
        if key in _DVC_KEYS_INT:
            if not (v == "0" or (v[:1] in "123456789" and v.isdigit() and v.isascii())):
                return None
            item[key] = int(v)
        elif key in _DVC_KEYS_STR and _plain_str(key, v):
            item[key] = v
        else:
            return None
    return {"outs": outs}


def load_yaml(text: str | None) -> dict:
    if text and text.startswith("outs:\n"):
        fast = _fast_dvc(text)
        if fast is not None:
            return fast
    import yaml

    try:  # libyaml's loader when built with it: ~10x faster on many small .dvc files
        data = yaml.load(text or "", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def is_meta_file(path: str) -> bool:
    """A .dvc file or a dvc.lock (not DVC's own .dvc/ folder)."""
    return (path.endswith(".dvc") and not path.startswith(".dvc/")) or \
        os.path.basename(path) == "dvc.lock"


def _outside(raw: str, source: str) -> EVError:
    return EVError(f"{source} records the output path {raw!r}, which resolves outside the "
                   "repository (DVC refuses such paths too); nothing was read or changed",
                   code=USAGE, hint=f"fix or remove {source} (git checkout -- {source}, or "
                                    "git rm it if it is not yours)")


def safe_out_path(raw: str, base: str, source: str, root: Path | None = None) -> str:
    """A .dvc/dvc.lock output path made repository-relative ('/'-separated), or EVError 2.

    Lexically: no absolute path, no '..' climbing above the root. With root (a checked-out
    tree): the output's parent directory, symlinks resolved, must be inside root as well (the
    output itself may be a symlink into a DVC cache outside the tree).
    """
    if not raw or os.path.isabs(raw) or raw.startswith("~") or "\0" in raw:
        raise _outside(raw, source)
    p = os.path.normpath(os.path.join(base, raw)).replace(os.sep, "/")
    if p == ".." or p.startswith("../") or p in (".", ""):
        raise _outside(raw, source)
    if root is not None:
        top = _path(os.path.realpath(root))
        parent = (top / p).parent.resolve()
        if parent != top and top not in parent.parents:
            raise _outside(raw, source)
    return p


def parse_outs(text: str | None, source: str, root: Path | None = None) -> list[Out]:
    """Outputs recorded in a .dvc file or dvc.lock; paths made relative to the repo root and
    checked to stay inside it (see safe_out_path; pass root for a checked-out tree)."""
    doc = load_yaml(text)
    base = os.path.dirname(source)
    if os.path.basename(source) == "dvc.lock":
        entries = [o for st in (doc.get("stages") or {}).values() if isinstance(st, dict)
                   for o in (st.get("outs") or [])]
    else:
        entries = doc.get("outs") or []
        if doc.get("wdir"):  # old .dvc files: paths relative to wdir
            base = safe_out_path(str(doc["wdir"]), base, source) if str(doc["wdir"]) != "." \
                else base
    outs = []
    for o in entries if isinstance(entries, list) else []:
        if isinstance(o, dict) and o.get("path") and o.get("md5"):
            p = safe_out_path(str(o["path"]), base, source, root)
            outs.append(Out(p, str(o["md5"]), source, legacy=o.get("hash") != "md5"))
    return outs


def first_md5(text: str | None) -> str | None:
    """The md5 of the single output of a .dvc file's text (None if absent)."""
    outs = load_yaml(text).get("outs") or []
    return outs[0].get("md5") if outs and isinstance(outs[0], dict) else None


def config_files(repo: str | os.PathLike) -> list[str]:
    """DVC's config files in the order DVC applies them (later wins): system, global, repo,
    local. The first two honour DVC_SYSTEM_CONFIG_DIR / DVC_GLOBAL_CONFIG_DIR like DVC."""
    system = os.environ.get("DVC_SYSTEM_CONFIG_DIR") or "/etc/xdg/dvc"
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    glob = os.environ.get("DVC_GLOBAL_CONFIG_DIR") or os.path.join(xdg, "dvc")
    dvc = os.path.join(os.fspath(repo), ".dvc")
    return [os.path.join(system, "config"), os.path.join(glob, "config"),
            os.path.join(dvc, "config"), os.path.join(dvc, "config.local")]


def _unquote(v: str) -> str:
    v = v.strip()
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v


class _Plain:
    """A ConfigParser's reading of a config file of the plain shape DVC writes (_plain_config),
    with the few methods read here."""

    def __init__(self, secs: dict[str, dict[str, str]]):
        self._secs = secs

    def sections(self) -> list[str]:
        return list(self._secs)

    def items(self, sec: str) -> list[tuple[str, str]]:
        return list(self._secs[sec].items())

    def has_option(self, sec: str, opt: str) -> bool:
        return opt.lower() in self._secs.get(sec, {})

    def get(self, sec: str, opt: str) -> str:
        return self._secs[sec][opt.lower()]


def _plain_config(text: str) -> dict[str, dict[str, str]] | None:
    """What ConfigParser(interpolation=None, strict=False) reads from text, {section: {key:
    value}}, when text has only the shape DVC writes: `[section]` lines, `key = value` lines
    at one indent per section, blank lines; None (configparser reads it) for anything else:
    comments, continuation lines, a [DEFAULT] section, a repeated section or key, a `:`
    before the first `=`, a tab or any other character but printable ones and newlines.
    Without configparser (~5 ms of a first list, and its `re`); test_namematch checks that
    both readings agree."""
    secs: dict[str, dict[str, str]] = {}
    cur = None
    opt = False  # whether cur has an option yet (a deeper line would continue its value)
    level = 0
    for line in text.split("\n"):
        v = line.strip()
        if not v:
            continue
        if not line.isprintable() or v[0] in "#;":
            return None
        indent = len(line) - len(line.lstrip(" "))
        if cur is not None and opt and indent > level:
            return None  # a continuation line
        level = indent
        if v[0] == "[":
            name = v[1:-1]
            if v[-1] != "]" or not name or name == "DEFAULT" or name in secs:
                return None
            cur = secs[name] = {}
            opt = False
            continue
        eq = v.find("=")
        if cur is None or eq <= 0 or ":" in v[:eq]:
            return None
        key = v[:eq].rstrip().lower()
        if not key or key in cur:
            return None
        cur[key] = v[eq + 1:].strip()
        opt = True
    return secs


def _parser(path: str | os.PathLike):
    """configparser's reading of one config file; None if missing or unreadable (configparser
    itself, ~5 ms, is imported only when a file exists that _plain_config does not read)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return None
    plain_secs = _plain_config(text)
    if plain_secs is not None:
        return _Plain(plain_secs)
    import configparser

    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(text)
    except configparser.Error:
        return None
    return cp


def read_config_file(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """One DVC config file as {section: {key: value}}; sections as DVC names them
    ('cache', 'core', 'remote "storage"'). A missing or unreadable file is empty."""
    cp = _parser(path)
    if cp is None:
        return {}
    return {_unquote(sec): {k: _unquote(v) for k, v in cp.items(sec)} for sec in cp.sections()}


def read_config(repo: str | os.PathLike) -> dict[str, dict[str, tuple[str, str]]]:
    """DVC's merged config: {section: {key: (value, the config file that set it)}}."""
    merged: dict[str, dict[str, tuple[str, str]]] = {}
    for f in config_files(repo):
        for sec, kv in read_config_file(f).items():
            for k, v in kv.items():
                merged.setdefault(sec, {})[k] = (v, f)
    return merged


def _local_path(value: str, origin: str) -> str:
    """A path in a config file: relative ones are relative to that file's directory."""
    p = os.path.expanduser(value)
    return os.path.realpath(os.path.join(os.path.dirname(origin), p))


def _path(p: str):
    from pathlib import Path  # ~5 ms: listcold uses the str forms (cache_dir_str, ...)

    return Path(p)


def cache_dir_str(repo: str | os.PathLike) -> str:
    """The cache directory DVC uses in repo (`dvc cache dir`): `[cache] dir` from the config
    levels (later wins), relative to the file that sets it; default .dvc/cache."""
    cfg = read_config(repo).get("cache", {})
    if "dir" in cfg:
        return _local_path(*cfg["dir"])
    return os.path.realpath(os.path.join(os.fspath(repo), ".dvc", "cache"))


def cache_dir(repo: str | os.PathLike) -> Path:
    return _path(cache_dir_str(repo))


def default_remote(repo: str | os.PathLike) -> tuple[str | None, str | None]:
    """(default remote's name, its URL: a local path made absolute); (None, None) if unset."""
    cfg = read_config(repo)
    name = cfg.get("core", {}).get("remote", (None, None))[0]
    if not name:
        return None, None
    found = cfg.get(f'remote "{name}"', {}).get("url")
    if not found:
        return name, None
    url, origin = found
    if "://" not in url:
        url = _local_path(url, origin)
    return name, url


def local_remote_str(repo: str | os.PathLike, remote: str | None = None) -> str | None:
    """The directory of the remote (default: the default remote) when it is a plain local
    directory configured in the repository's own config files (.dvc/config, config.local)
    with no option besides its url; else None (DVC's API resolves it: S3, global config,
    options). What revfile reads a local remote's objects through, without DVC."""
    name, urls, extra = remote, {}, set()
    for fname in ("config", "config.local"):
        cfg = os.path.join(os.fspath(repo), ".dvc", fname)
        if not os.path.isfile(cfg):
            continue
        cp = _parser(cfg)
        if cp is None:
            return None
        if remote is None and cp.has_option("core", "remote"):
            name = cp.get("core", "remote").strip().strip("'\"")
        for raw in cp.sections():
            sec = raw.strip("'")  # DVC writes ['remote "name"'] (configobj quoting)
            if sec.startswith('remote "') and sec.endswith('"'):
                rname = sec[len('remote "'):-1]
                for k, v in cp.items(raw):
                    if k == "url":
                        v = v.strip().strip("'\"")
                        urls[rname] = (v, os.path.dirname(cfg))
                    else:
                        extra.add((rname, k))  # e.g. worktree/version_aware: DVC's API
    if name and name in urls and not any(r == name for r, _k in extra):
        url, base = urls[name]
        if "://" not in url and not url.startswith(("remote:", "s3:", "gs:", "azure:")):
            return os.path.realpath(os.path.join(base, os.path.expanduser(url)))
    return None


def local_remote(repo: str | os.PathLike, remote: str | None = None) -> Path | None:
    got = local_remote_str(repo, remote)
    return None if got is None else _path(got)


def write_worktree_config(src_local: Path, dest_local: Path, cache: Path, cache_type: str,
                          write) -> None:
    """dest's .dvc/config.local = main's config.local (remotes, credentials; local paths made
    absolute, as they were relative to main's .dvc/) + `[cache] dir` and `type`: what
    `dvc cache dir --local` and `dvc config --local cache.type` write, without two DVC runs.
    write(path, text) writes the file (atomically)."""
    secs = read_config_file(src_local) if src_local.is_file() else {}
    for sec, kv in secs.items():
        if sec.startswith("remote ") and "url" in kv and "://" not in kv["url"]:
            kv["url"] = str(_local_path(kv["url"], src_local))
    secs.setdefault("cache", {}).update(dir=str(cache), type=cache_type)
    lines = []
    for sec, kv in secs.items():
        lines.append(f"['{sec}']" if " " in sec else f"[{sec}]")
        lines += [f'    {k} = "{v}"' if "," in v or " " in v else f"    {k} = {v}"
                  for k, v in kv.items()]
    write(dest_local, "\n".join(lines) + "\n")


def object_path(root: Path, md5: str, legacy: bool = False) -> Path:
    """Where a cache or a local-directory remote keeps object md5."""
    base = root if legacy else root / "files" / "md5"
    return base / md5[:2] / md5[2:]


def object_file(root: str, md5: str, legacy: bool = False) -> str:
    """object_path as a str."""
    base = root if legacy else os.path.join(root, "files", "md5")
    return os.path.join(base, md5[:2], md5[2:])


def find_object(cache: Path, md5: str) -> Path | None:
    """The object's file in the cache, in either layout, if present."""
    found = find_object_file(os.fspath(cache), md5)
    return None if found is None else _path(found)


def find_object_file(cache: str, md5: str) -> str | None:
    """find_object as a str."""
    for legacy in (False, True):
        p = object_file(cache, md5, legacy)
        if os.path.isfile(p):
            return p
    return None


def _object_stat(cache: str, md5: str) -> os.stat_result | None:
    """stat of the cache object md5 (either layout), None if absent: strings, not pathlib,
    since this runs once per file of a 10,000-file output."""
    for p in (f"{cache}/files/md5/{md5[:2]}/{md5[2:]}", f"{cache}/{md5[:2]}/{md5[2:]}"):
        try:
            return os.stat(p)
        except OSError:
            continue
    return None


def output_changes(root: Path, cache: Path, outs: list[Out],
                   hash_limit: int = 64 << 20) -> list[str] | None:
    """'path (modified|new)' for each output file whose workspace bytes differ from what its
    .dvc/dvc.lock records, found in-process (what `dvc status` says, without a DVC start-up).

    A file that is the cache object itself (hardlink, symlink) is unchanged without reading
    it; others are hashed. None when this cannot tell exactly: a legacy (DVC 2) md5, a
    directory whose manifest is not in the cache, or more than hash_limit bytes to hash; the
    caller then asks `dvc status`. A missing output is not a change (its bytes are cached).
    """

    from .atomic import md5_file

    cache_s = str(cache)
    changed, to_hash, total = [], [], 0
    files: list[tuple[str, str, str]] = []  # (path, md5, label)
    for o in outs:
        if o.legacy:
            return None
        p = os.path.join(str(root), o.path)
        if o.is_dir:
            man = find_object(cache, o.md5)
            if man is None:
                return None
            listed = dir_entries(man)
            if listed is None:
                return None
            entries = dict(listed)
            if not os.path.isdir(p):
                continue
            top = len(p) + 1  # os.walk yields paths under p: slice, not relpath (10k files)
            for dirpath, _dirs, names in os.walk(p):
                for n in names:
                    f = os.path.join(dirpath, n)
                    rel = f[top:].replace(os.sep, "/")
                    if rel not in entries:
                        changed.append(f"{o.path}/{rel} (new)")
                    else:
                        files.append((f, entries[rel], f"{o.path}/{rel}"))
        elif os.path.exists(p):
            files.append((p, o.md5, o.path))
    for f, md5, label in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        obj = _object_stat(cache_s, md5)
        if obj is not None:
            if (st.st_dev, st.st_ino) == (obj.st_dev, obj.st_ino):
                continue  # the cache object itself (hardlink, or a symlink's target)
            if st.st_size != obj.st_size:
                changed.append(f"{label} (modified)")
                continue
        total += st.st_size
        if total > hash_limit:
            return None
        to_hash.append((f, md5, label))
    changed += [f"{label} (modified)" for f, md5, label in to_hash if md5_file(f) != md5]
    return sorted(changed)


try:  # md5 without hashlib's OpenSSL import (~3 ms of a first list); the same digests
    from _md5 import md5 as md5_new
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import md5 as md5_new


def dir_entries(manifest: str | os.PathLike) -> list[tuple[str, str]] | None:
    """(relpath, md5) of each file a directory output's `.dir` object lists, or None when
    it can't be read or is not such a listing. Paths are as recorded: join them through
    safe_out_path before touching a file."""
    import json

    try:
        with open(manifest, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or not all(
            isinstance(e, dict) and isinstance(e.get("relpath"), str)
            and isinstance(e.get("md5"), str) for e in data):
        return None
    return [(e["relpath"], e["md5"]) for e in data]


def hash_copy(src: str | os.PathLike, dest: str | os.PathLike | None = None) -> str:
    """src's md5 (the name DVC gives its object), read once; with dest, its bytes are
    written there on the way (a temp file the caller renames in only if the md5 is right:
    DVC trusts its cache objects, so every copy out of or into one is checked)."""
    h = md5_new()
    with open(src, "rb") as fi:
        fo = open(dest, "wb") if dest is not None else None  # noqa: SIM115 - closed below
        try:
            while chunk := fi.read(1 << 20):
                h.update(chunk)
                if fo is not None:
                    fo.write(chunk)
        finally:
            if fo is not None:
                fo.close()
    return h.hexdigest()


# Outputs under these folders are what an experiment produced, not the data it used.
PRODUCT_DIRS = ("results/", "models/")


def data_outs(outs: dict[str, Out]) -> dict[str, Out]:
    return {p: o for p, o in outs.items() if not p.startswith(PRODUCT_DIRS)}


def data_short(outs: dict[str, Out]) -> str:
    """6 characters naming the data: the out's own md5 if one, else a digest of all."""
    d = data_outs(outs)
    if not d:
        return "none"
    if len(d) == 1:
        return next(iter(d.values())).short
    joined = "\n".join(f"{p} {o.md5}" for p, o in sorted(d.items()))
    return md5_new(joined.encode()).hexdigest()[:6]  # noqa: S324 - a name, not security
