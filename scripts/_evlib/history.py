"""Experiment history: e-tags, DVC hashes at a tag, results-DB runs, tag messages.

Shared by tag_suggest.py (write side: the next tag and its message) and experiments.py
(read side: list, show, compare, get, sql). Everything about a past version is read from
its tag (the `.dvc` files and the DVC-tracked results DB as committed there), never from the
working tree, so history stays right after the current DB or data change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_path, md5_file
from .dvcmeta import Out, cache_dir, find_object, is_meta_file, parse_outs
from .errors import NOT_FOUND, USAGE, EVError
from .proc import dvc_run, git, git_ok
from .runs import Run, load_runs, rank
from .settings import META_COLS, METRIC_RE
from .sql import sqlite_connect

DEFAULT_DB = "results/experiments.db"
E_TAG = re.compile(r"^e(\d+)\.(\d+)\.(\d+)$")
MAYBE_E_TAG = re.compile(r"^e\d")  # looks like an e-tag: e2, e1.2, e1.2.3-rc are malformed
# Outputs under these folders are what an experiment produced, not the data it used.
PRODUCT_DIRS = ("results/", "models/")


# --- tags ---------------------------------------------------------------------------------

def parse_e(tag: str) -> tuple[int, int, int] | None:
    m = E_TAG.match(tag)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


@dataclass
class TagInfo:
    name: str
    date: str
    commit: str
    message: str

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0].strip()

    @property
    def description(self) -> str:
        return self.subject.rsplit("|", 1)[-1].strip()

    @property
    def lineage(self) -> dict:
        """The JSON block tag_suggest writes under the first line ({} if absent)."""
        body = self.message.split("\n", 1)[1] if "\n" in self.message else ""
        start = body.find("{")
        if start < 0:
            return {}
        try:
            return json.loads(body[start:body.rfind("}") + 1])
        except ValueError:
            return {}


def all_tags(repo: Path) -> dict[str, TagInfo]:
    fmt = "%(refname:short)%1f%(creatordate:iso-strict)%1f%(*objectname)%(objectname)%1f" \
          "%(contents)%1e"
    out = git(repo, "for-each-ref", "refs/tags", f"--format={fmt}")
    tags = {}
    for rec in out.split("\x1e"):
        rec = rec.strip("\n")
        if not rec:
            continue
        name, date, obj, msg = (rec.split("\x1f") + ["", "", "", ""])[:4]
        # %(*objectname) is the peeled commit for annotated tags; it precedes %(objectname)
        tags[name] = TagInfo(name, date, obj[:40], msg.strip())
    return tags


def e_tags(tags, warn=None) -> list[str]:
    """Well-formed e-tags in version order; malformed e-looking tags are reported via warn."""
    good = []
    for name in sorted(tags):
        if parse_e(name):
            good.append(name)
        elif MAYBE_E_TAG.match(name) and warn:
            warn(f"ignoring malformed experiment tag {name!r} (expected e<major>.<minor>.<patch>)")
    return sorted(good, key=parse_e)


def bump_version(last: str | None, level: str) -> str:
    if last is None:
        return "e0.1.0"
    major, minor, patch = parse_e(last)
    if level == "major":
        return f"e{major + 1}.0.0"
    if level == "minor":
        return f"e{major}.{minor + 1}.0"
    return f"e{major}.{minor}.{patch + 1}"


def exp_tags(tags) -> list[str]:
    """Worktree tags exp-NAME-vN, by name then N."""
    found = [(m[1], int(m[2]), t) for t in tags if (m := EXP_TAG.match(t))]
    return [t for _name, _n, t in sorted(found)]


EXP_TAG = re.compile(r"^exp-(.+)-v(\d+)$")


def next_exp_tag(tags, name: str) -> str:
    pat = re.compile(rf"^exp-{re.escape(name)}-v(\d+)$")
    nums = [int(m[1]) for t in tags if (m := pat.match(t))]
    return f"exp-{name}-v{max(nums, default=0) + 1}"


def require_tag(repo: Path, tag: str) -> None:
    if not git_ok(repo, "rev-parse", "--verify", "-q", f"refs/tags/{tag}"):
        raise EVError(f"no tag {tag!r} in this repository", code=NOT_FOUND,
                      hint="list versions with experiments.py list (or git tag -l 'e*')")


# --- DVC-tracked outputs at a revision ---------------------------------------------------

def outs_at(repo: Path, rev: str | None) -> dict[str, Out]:
    """Tracked outputs recorded at rev (a tag or commit), or in the working tree if None."""
    result: dict[str, Out] = {}
    if rev is None:
        files = git(repo, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
        for f in filter(is_meta_file, files):
            p = repo / f
            if p.is_file():
                for o in parse_outs(p.read_text(), f):
                    result[o.path] = o
        return result
    files = git(repo, "ls-tree", "-r", "--name-only", rev).splitlines()
    for f in filter(is_meta_file, files):
        for o in parse_outs(git(repo, "show", f"{rev}:{f}"), f):
            result[o.path] = o
    return result


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
    return hashlib.md5(joined.encode()).hexdigest()[:6]  # noqa: S324 - a name, not security


# --- fetching a tracked file as of a revision ---------------------------------------------

def cache_object(repo: Path, md5: str) -> Path | None:
    return find_object(cache_dir(repo), md5)


def find_out(outs: dict[str, Out], path: str) -> tuple[Out, str] | None:
    """The out covering path, and path relative to it ('' if path is the out itself)."""
    for p, o in outs.items():
        if path == p:
            return o, ""
        if path.startswith(p + "/"):
            return o, path[len(p) + 1:]
    return None


def _md5_in_cache(repo: Path, out: Out, rel: str) -> str | None:
    """The md5 of path rel inside out, read from the cache (.dir listing), if available."""
    if not rel:
        return out.md5
    listing = cache_object(repo, out.md5)
    if listing is None:
        return None
    try:
        entries = json.loads(listing.read_text())
    except ValueError:
        return None
    for e in entries:
        if e.get("relpath") == rel:
            return e.get("md5")
    return None


def repo_rel(repo: Path, path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(repo)
        except ValueError as exc:
            raise EVError(f"{path} is outside the repository {repo}", code=USAGE,
                          hint="give a path inside the repository") from exc
    return os.path.normpath(str(p)).replace(os.sep, "/")


def fetch(repo: Path, rev: str, path: str, dest: Path) -> dict:
    """Write the file path as of rev to dest (atomically), from the cache, else the remote.

    Never touches the working tree. Returns {"md5", "source"}. A git-tracked (non-DVC) file
    comes from git. Raises NOT_FOUND when rev has no such file.
    """
    path = repo_rel(repo, path)
    hit = find_out(outs_at(repo, rev), path)
    if hit is None:
        if git_ok(repo, "cat-file", "-e", f"{rev}:{path}"):
            with atomic_path(dest) as tmp:
                data = _git_blob(repo, rev, path)
                tmp.write_bytes(data)
            return {"md5": hashlib.md5(data).hexdigest(), "source": "git"}  # noqa: S324
        raise EVError(f"{path} is not tracked (by DVC or git) at {rev}", code=NOT_FOUND,
                      hint=f"see the tracked artifacts with experiments.py show {rev}")
    out, rel = hit
    md5 = _md5_in_cache(repo, out, rel)
    obj = cache_object(repo, md5) if md5 and not md5.endswith(".dir") else None
    if obj is not None:
        with atomic_path(dest) as tmp:
            shutil.copyfile(obj, tmp)  # a new file: the cache object is only read
            if md5_file(tmp) != md5:
                raise EVError(f"cache object for {path} at {rev} is corrupt (md5 mismatch)",
                              hint="run `dvc fetch` / `dvc cache` checks, then retry")
        return {"md5": md5, "source": "cache"}
    # Not in the local cache: let dvc read it from the remote recorded at rev, into a temp
    # file next to dest, then move it into place.
    with atomic_path(dest) as tmp:
        tmp.unlink()
        cp = dvc_run(repo, "get", str(repo), path, "--rev", rev, "-o", str(tmp))
        if cp.returncode != 0 or not tmp.is_file():
            lines = [ln for ln in (cp.stderr or cp.stdout).splitlines() if ln.strip()]
            msg = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "")
            raise EVError(f"{path} at {rev} is in neither the local cache nor the remote: "
                          f"{msg.strip()}", code=NOT_FOUND,
                          hint="dvc push from the machine that made it, or check the remote")
        got = md5_file(tmp)
    if md5 and got != md5:
        raise EVError(f"{path} at {rev}: remote copy has md5 {got}, expected {md5}")
    return {"md5": got, "source": "remote"}


def _git_blob(repo: Path, rev: str, path: str) -> bytes:
    """Bytes of a git-tracked file at rev (git archive to a file: stdout is text-decoded)."""
    import tarfile

    with tempfile.TemporaryDirectory(prefix="ev-blob-") as d:
        tar = os.path.join(d, "blob.tar")
        git(repo, "archive", "--format=tar", "-o", tar, rev, "--", path)
        with tarfile.open(tar) as tf:
            fh = tf.extractfile(path)
            return fh.read() if fh else b""


# --- results DB: runs ---------------------------------------------------------------------

def run_params(r: Run, metric_cols: set[str]) -> dict:
    return {k: v for k, v in r.values.items() if k not in META_COLS and k not in metric_cols}


def run_metrics(r: Run, metric_cols: set[str]) -> dict:
    return {k: v for k, v in r.values.items() if k in metric_cols}


def is_metric(col: str, extra: str | None = None) -> bool:
    return col == extra or bool(METRIC_RE.search(col.lower()))


def metric_columns(runs: list[Run], metric: str | None) -> set[str]:
    cols = {k for r in runs for k, v in r.values.items()
            if k not in META_COLS and is_metric(k, metric) and _num(v) is not None}
    if metric:
        cols.add(metric)
    return cols


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def choose_metric(runs: list[Run], metric: str | None) -> str:
    if metric:
        return metric
    cols = sorted({k for r in runs for k in r.values if k not in META_COLS and is_metric(k)})
    if "f1_score" in cols or not cols:
        return "f1_score"
    return cols[0]


def best_run(runs: list[Run], metric: str, mode: str, version: str) -> Run:
    scored = [r for r in runs if _num(r.values.get(metric)) is not None]
    if not scored:
        present = sorted({k for r in runs for k in r.values if k not in META_COLS})
        raise EVError(f"no run of {version} has a numeric {metric!r}", code=USAGE,
                      hint=f"pass --metric one of: {', '.join(present) or '(no columns)'}")
    return rank(scored, metric, mode, value_of=lambda r: _num(r.values[metric]))[0]


def fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}" if v == v else "nan"
    return str(v)


# --- the results DB as of a tag -----------------------------------------------------------

class DBAt:
    """Context manager: a readable path of the results DB as of rev (None: working tree).

    At a tag the DB is the DVC-tracked object recorded there (copied to a temp file from
    the cache or the remote); if the tag does not track it, None is yielded.
    """

    def __init__(self, repo: Path, db_rel: str, rev: str | None, snapshot: bool = False):
        self.repo, self.db_rel, self.rev, self.snapshot = repo, db_rel, rev, snapshot
        self.tmp: str | None = None

    def __enter__(self) -> Path | None:
        if self.rev is None:
            p = self.repo / self.db_rel
            if not p.is_file() or not self.snapshot:
                return p if p.is_file() else None
            # A private copy (sqlite backup: consistent, includes the WAL): whatever a query
            # does to it, the user's DB is never opened for writing.
            self.tmp = tempfile.mkdtemp(prefix="ev-history-")
            dest = Path(self.tmp) / "experiments.db"
            src = sqlite_connect(p, readonly=True)
            try:
                out = sqlite_connect(dest)
                try:
                    src.backup(out)
                finally:
                    out.close()
            finally:
                src.close()
            return dest
        if find_out(outs_at(self.repo, self.rev), self.db_rel) is None and not git_ok(
                self.repo, "cat-file", "-e", f"{self.rev}:{self.db_rel}"):
            return None
        self.tmp = tempfile.mkdtemp(prefix="ev-history-")
        dest = Path(self.tmp) / "experiments.db"
        fetch(self.repo, self.rev, self.db_rel, dest)
        return dest

    def __exit__(self, *exc) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class VersionSummary:
    version: str
    runs: list[Run]
    metric: str
    mode: str
    best: Run | None
    metric_cols: set[str]

    def payload(self) -> dict:
        b = self.best
        return {
            "version": self.version, "runs": len(self.runs), "metric": self.metric,
            "mode": self.mode, "best_run": b.track_id if b else None,
            "model": b.model if b else None,
            "value": b.values.get(self.metric) if b else None,
            "params": run_params(b, self.metric_cols) if b else {},
            "metrics": run_metrics(b, self.metric_cols) if b else {},
        }


def summarize(runs: list[Run], version: str, metric: str | None, mode: str) -> VersionSummary:
    m = choose_metric(runs, metric)
    cols = metric_columns(runs, m)
    best = None
    if runs and any(_num(r.values.get(m)) is not None for r in runs):
        best = best_run(runs, m, mode, version)
    return VersionSummary(version, runs, m, mode, best, cols)


def version_runs(repo: Path, db_rel: str, version: str, rev: str | None, warn=None
                 ) -> list[Run]:
    """Runs of version from the DB at rev; falls back to the working-tree DB if rev has none
    (or its DB object is neither in the cache nor on the remote: warned)."""
    try:
        with DBAt(repo, db_rel, rev) as db:
            if db is not None:
                runs = load_runs(db, version)
                if runs:
                    return runs
    except EVError as exc:
        if exc.code != NOT_FOUND:
            raise
        if warn:
            warn(f"{exc.message}; reading {version}'s rows from the working-tree {db_rel}")
    if rev is not None:
        cur = repo / db_rel
        if cur.is_file():
            return load_runs(cur, version)
    return []


def _changed(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if fmt(old.get(k)) != fmt(new.get(k))]


def db_path(repo: Path, db: str) -> Path:
    """--db: absolute, or relative to the repository root (not the cwd: history reads the
    same repo-relative path at every tag)."""
    p = Path(db).expanduser()
    return p if p.is_absolute() else repo / p


# --- experiments.py: the read side --------------------------------------------------------

def version_record(repo: Path, tag: TagInfo, db_rel: str, metric: str | None, mode: str,
                   warn=None) -> dict:
    """One version as read from its tag: best run, run count, data hash, description."""
    outs = outs_at(repo, tag.name)
    # A tag made with --tag (main after merging a worktree's runs) names its rows' version
    # in its lineage block; otherwise the tag is the version.
    version = tag.lineage.get("version") or tag.name
    runs = version_runs(repo, db_rel, version, tag.name, warn)
    s = summarize(runs, version, metric, mode)
    rec = s.payload()
    rec.update({"tag": tag.name, "date": tag.date, "commit": tag.commit,
                "data": data_short(outs), "description": tag.description,
                "_summary": s, "_outs": outs})
    return rec


def public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def compare(a: dict, b: dict, repo: Path) -> dict:
    sa, sb = a["_summary"], b["_summary"]
    ma, mb = a["metrics"], b["metrics"]
    deltas = {}
    for k in sorted(set(ma) | set(mb)):
        x, y = _num(ma.get(k)), _num(mb.get(k))
        deltas[k] = {"from": ma.get(k), "to": mb.get(k),
                     "delta": None if x is None or y is None else round(y - x, 10)}
    pa, pb = a["params"], b["params"]
    params = {k: {"from": pa.get(k), "to": pb.get(k)} for k in _changed(pa, pb)}
    oa, ob = a["_outs"], b["_outs"]
    data = {p: {"from": oa[p].md5 if p in oa else None, "to": ob[p].md5 if p in ob else None}
            for p in sorted(set(oa) | set(ob))
            if (oa[p].md5 if p in oa else None) != (ob[p].md5 if p in ob else None)}
    stat = git(repo, "diff", "--stat", a["tag"], b["tag"], "--", ".", ":(exclude)*.dvc",
               ":(exclude)dvc.lock")
    return {"from": a["tag"], "to": b["tag"], "metric": sa.metric or sb.metric,
            "metrics": deltas, "params_changed": params, "artifacts_changed": data,
            "diffstat": stat}
