"""Experiment history: e-tags, DVC hashes at a tag, results-DB runs, tag messages.

Shared by tag_suggest.py (write side: the next tag and its message) and experiments.py
(read side: list, show, compare, get, sql). Everything about a past version is read from
its tag (the `.dvc` files and the DVC-tracked results DB as committed there), never from the
working tree, so history stays right after the current DB or data change.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .dvcmeta import PRODUCT_DIRS, Out, data_outs, data_short, is_meta_file, parse_outs  # noqa: F401
from .errors import NOT_FOUND, USAGE, EVError
from .evtags import E_TAG, FOR_EACH_REF, MAYBE_E_TAG, TagInfo, e_tags, parse_e, parse_refs  # noqa: F401
from .histcache import SummaryCache
from .proc import git, git_ok
from .revfile import RevFiles, file_at
from .summary import (  # noqa: F401 - history's API (moved there, not copied)
    VersionSummary,
    _num,
    best_run,
    choose_metric,
    fmt,
    is_metric,
    metric_columns,
    run_metrics,
    run_params,
    summarize,
)

TYPE_CHECKING = False  # typing's own import costs a few ms of a fresh list
if TYPE_CHECKING:
    from .runs import Run

# runs/sql (sqlite3) and the scratch helpers are imported where used: a `list` answered from
# the summary cache never needs them, and its start-up is most of its cost.

DEFAULT_DB = "results/experiments.db"


# --- tags ---------------------------------------------------------------------------------

def all_tags(repo: Path) -> dict[str, TagInfo]:
    out = git(repo, "for-each-ref", "refs/tags", f"--format={FOR_EACH_REF}")
    tags, nested = parse_refs(out)
    if nested:
        from .repo import peel_commits

        peeled = peel_commits(repo, [tags[n].commit for n in nested])
        for n in nested:
            tags[n].commit = peeled.get(tags[n].commit, tags[n].commit)
    return tags


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
    if rev is not None:
        with RevFiles(repo) as rf:
            return rf.outs_at(rev)
    result: dict[str, Out] = {}
    files = git(repo, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for f in filter(is_meta_file, files):
        p = repo / f
        if p.is_file():
            for o in parse_outs(p.read_text(), f):
                result[o.path] = o
    return result


# --- a tracked file as of a revision (the one primitive: revfile) ------------------------

def find_out(outs: dict[str, Out], path: str) -> tuple[Out, str] | None:
    """The out covering path, and path relative to it ('' if path is the out itself)."""
    for p, o in outs.items():
        if path == p:
            return o, ""
        if path.startswith(p + "/"):
            return o, path[len(p) + 1:]
    return None


def repo_rel(repo: Path, path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(repo)
        except ValueError as exc:
            raise EVError(f"{path} is outside the repository {repo}", code=USAGE,
                          hint="give a path inside the repository") from exc
    rel = os.path.normpath(str(p)).replace(os.sep, "/")
    if rel == ".." or rel.startswith("../"):
        raise EVError(f"{path} is outside the repository {repo}", code=USAGE,
                      hint="give a path inside the repository")
    return rel


def fetch(repo: Path, rev: str, path: str, dest: Path) -> dict:
    """Write the file path as of rev to dest (atomically), from the cache, else the remote
    (fetched into the cache), or from git. Never touches the working tree.
    Returns {"md5", "source"}; NOT_FOUND when rev has no such file."""
    return file_at(repo, rev, repo_rel(repo, path), dest)


# --- results DB: runs ---------------------------------------------------------------------

# --- the results DB as of a tag -----------------------------------------------------------

class DBAt:
    """Context manager: a readable path of the results DB as of rev (None: working tree).

    At a tag the DB is the DVC-tracked object recorded there (copied to a temp file from
    the cache, or the remote through the cache), or the git-tracked file; if the tag has
    neither, None is yielded.
    """

    def __init__(self, repo: Path, db_rel: str, rev: str | None, snapshot: bool = False,
                 files: RevFiles | None = None):
        self.repo, self.db_rel, self.rev, self.snapshot = repo, db_rel, rev, snapshot
        self.files = files
        self.tmp: str | None = None

    def __enter__(self) -> Path | None:
        from .atomic import scratch_dir
        from .sql import sqlite_connect

        if self.rev is None:
            p = self.repo / self.db_rel
            if not p.is_file() or not self.snapshot:
                return p if p.is_file() else None
            # A private copy (sqlite backup: consistent, includes the WAL): whatever a query
            # does to it, the user's DB is never opened for writing.
            self.tmp = scratch_dir("ev-history-")
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
        rf = self.files or RevFiles(self.repo)
        try:
            if rf.locate(self.rev, self.db_rel).out is None and \
                    rf.blob(self.rev, self.db_rel) is None:
                return None
            self.tmp = scratch_dir("ev-history-")
            dest = Path(self.tmp) / "experiments.db"
            rf.write(self.rev, self.db_rel, dest)
            return dest
        finally:
            if self.files is None:
                rf.close()

    def __exit__(self, *exc) -> None:
        if self.tmp:
            from .atomic import remove_tree

            remove_tree(self.tmp)


def version_runs(repo: Path, db_rel: str, version: str, rev: str | None, warn=None
                 ) -> list[Run]:
    """Runs of version from the DB at rev; falls back to the working-tree DB if rev has none
    (or its DB object is neither in the cache nor on the remote: warned)."""
    with Reader(repo, db_rel, warn, use_cache=False) as rd:
        return rd.runs_at(rev, version)


def _changed(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if fmt(old.get(k)) != fmt(new.get(k))]


def db_path(repo: Path, db: str) -> Path:
    """--db: absolute, or relative to the repository root (not the cwd: history reads the
    same repo-relative path at every tag)."""
    p = Path(db).expanduser()
    return p if p.is_absolute() else repo / p


# --- experiments.py: the read side --------------------------------------------------------

class Reader:
    """One read of history: one `git cat-file --batch` for every tag's .dvc files, one DVC
    remote batch for every results DB the cache lacks, and the summary cache (histcache)
    so that a second `list` recomputes nothing."""

    def __init__(self, repo: Path, db_rel: str, warn=None, use_cache: bool = True):
        self.repo, self.db_rel, self.warn = repo, db_rel, warn
        self.rf = RevFiles(repo)
        self.cache = SummaryCache.load(repo, enabled=use_cache)
        self.tmp: str | None = None
        # every tag's commit, when known (list): the cache drops entries of other commits
        self.live: set[str] | None = None
        # False once a record read the working-tree DB: an answer that depends on more than
        # the tags' own objects (listfast never stores it)
        self.own_only = True

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.rf.close()
        self.cache.save(self.live)
        if self.tmp:
            from .atomic import remove_tree

            remove_tree(self.tmp)
            self.tmp = None

    def outs(self, rev: str, commit: str | None = None) -> dict[str, Out]:
        """Outputs at rev; by commit id from the summary cache when known."""
        if commit:
            got = self.cache.get_outs(commit)
            if got is not None:
                self.rf._outs.setdefault(commit, got)
                return got
        outs = self.rf.outs_at(commit or rev)
        if commit:
            self.cache.put_outs(commit, outs)
        return outs

    def _db_from_tag(self, rev: str, version: str) -> list[Run] | None:
        """Runs of version from the DB recorded at rev; None if rev records no DB."""
        loc = self.rf.locate(rev, self.db_rel)
        if loc.out is None and self.rf.blob(rev, self.db_rel) is None:
            return None
        from .runs import load_runs

        if self.tmp is None:
            from .atomic import scratch_dir

            self.tmp = scratch_dir("ev-history-")
        dest = Path(self.tmp) / "experiments.db"
        try:
            self.rf.write(rev, self.db_rel, dest, scratch=True)
            return load_runs(dest, version)
        finally:
            dest.unlink(missing_ok=True)

    def _runs(self, rev: str | None, version: str) -> tuple[list[Run], bool]:
        """(runs of version as of rev, whether they came from rev's own DB object).

        The working-tree DB stands in when rev records no DB, its DB is neither in the
        cache nor on the remote (warned), or its DB has no rows of version."""
        if rev is not None:
            try:
                runs = self._db_from_tag(rev, version)
                if runs:
                    return runs, True
            except EVError as exc:
                if exc.code != NOT_FOUND:
                    raise
                if self.warn:
                    self.warn(f"{exc.message}; reading {version}'s rows from the "
                              f"working-tree {self.db_rel}")
        from .runs import load_runs

        cur = self.repo / self.db_rel
        return (load_runs(cur, version) if cur.is_file() else []), False

    def runs_at(self, rev: str | None, version: str) -> list[Run]:
        return self._runs(rev, version)[0]

    def record(self, tag: TagInfo, metric: str | None, mode: str, *,
               full: bool = False) -> dict:
        """One version as read from its tag: best run, run count, data hash, description.

        full: also the VersionSummary (every run) in "_summary", for show and compare;
        without it the summary may come from the summary cache."""
        outs = self.outs(tag.name, tag.commit)
        # A tag made with --tag (main after merging a worktree's runs) names its rows'
        # version in its lineage block; otherwise the tag is the version.
        version = tag.lineage.get("version") or tag.name
        md5 = self.rf.locate(tag.commit, self.db_rel).md5
        key = self.cache.key(md5, version, metric, mode) if md5 else None
        rec = self.cache.get_summary(key) if key and not full else None
        s = None
        if rec is None:
            runs, own = self._runs(tag.commit, version)
            self.own_only = self.own_only and own
            s = summarize(runs, version, metric, mode)
            rec = s.payload()
            if own and key:  # computed from the tag's own DB object: content-addressed
                self.cache.put_summary(key, rec)
        rec = dict(rec)
        rec.update({"tag": tag.name, "date": tag.date, "commit": tag.commit,
                    "data": data_short(outs), "description": tag.description,
                    "_outs": outs})
        if s is not None:
            rec["_summary"] = s
        return rec

    def records(self, tags: list[TagInfo], metric: str | None, mode: str) -> list[dict]:
        """Every tag's record; the results DBs the cache lacks come in one remote batch."""
        need = []
        for t in tags:
            self.outs(t.name, t.commit)
            loc = self.rf.locate(t.commit, self.db_rel)
            version = t.lineage.get("version") or t.name
            if loc.out is not None and (loc.md5 is None or self.cache.get_summary(
                    self.cache.key(loc.md5, version, metric, mode)) is None):
                need.append((t.commit, self.db_rel))
        if need:
            try:
                self.rf.prefetch(need)
            except EVError as exc:  # no usable remote: each version then says so (warned)
                if exc.code != NOT_FOUND:
                    raise
        return [self.record(t, metric, mode) for t in tags]


def version_record(repo: Path, tag: TagInfo, db_rel: str, metric: str | None, mode: str,
                   warn=None) -> dict:
    """One version in full (every run in "_summary"), as read from its tag."""
    with Reader(repo, db_rel, warn) as rd:
        return rd.record(tag, metric, mode, full=True)


def public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


LEDGER_NAME = "ledger.jsonl"  # model_manager's production (and alias) ledgers
_NOT_CODE = (":(exclude)*.dvc", ":(exclude)dvc.lock", f":(exclude,glob)**/{LEDGER_NAME}")


def _ledger_entries(text: bytes | None) -> list:
    entries = []
    for line in (text or b"").decode("utf-8", "replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            if line.strip():
                entries.append({"unparsed": line.strip()})
    return entries


def production_changes(repo: Path, rev_a: str, rev_b: str) -> dict[str, list]:
    """Ledger entries added between two revisions, per ledger file: production changes
    (promote, rollback), not code."""
    names = git(repo, "diff", "--name-only", rev_a, rev_b, "--",
                f":(glob)**/{LEDGER_NAME}").splitlines()
    out: dict[str, list] = {}
    with RevFiles(repo) as rf:
        for path in names:
            old = _ledger_entries(rf.blob(rev_a, path))
            new = _ledger_entries(rf.blob(rev_b, path))
            added = new[len(old):] if new[:len(old)] == old else \
                [e for e in new if e not in old]
            out[path] = added
    return out


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
    # code: what git tracks itself, minus the artifacts' pointers and the ledgers
    stat = git(repo, "diff", "--stat", a["commit"], b["commit"], "--", ".", *_NOT_CODE)
    return {"from": a["tag"], "to": b["tag"], "metric": sa.metric or sb.metric,
            "metrics": deltas, "params_changed": params, "artifacts_changed": data,
            "production_changed": production_changes(repo, a["commit"], b["commit"]),
            "diffstat": stat}


def create_runs_view(con, schema: str = "results") -> None:
    """DuckDB view `runs` over schema."default": one row per run (track_id), each column
    its last non-null value, rows in timestamp order (rowid breaks ties): runs.RULE."""
    from .sql import quote_ident

    cols = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? AND "
        "table_name = 'default' ORDER BY ordinal_position", [schema]).fetchall()]
    if "track_id" not in cols:
        con.execute(f"CREATE VIEW runs AS SELECT * FROM {quote_ident(schema)}.\"default\"")
        return
    order = f"{quote_ident('timestamp')}, rowid" if "timestamp" in cols else "rowid"
    sel = ", ".join(f"last({quote_ident(c)} ORDER BY {order}) FILTER (WHERE {quote_ident(c)} "
                    f"IS NOT NULL) AS {quote_ident(c)}" for c in cols if c != "track_id")
    first = f"min({quote_ident('timestamp')}), " if "timestamp" in cols else "min(rowid), "
    con.execute(f"CREATE VIEW runs AS SELECT track_id{', ' + sel if sel else ''} FROM "
                f"{quote_ident(schema)}.\"default\" WHERE track_id IS NOT NULL "
                f"GROUP BY track_id ORDER BY {first}track_id")


def project_settings(repo: Path):
    """ev.yaml's settings (the defaults when there is none, without importing yaml)."""
    from . import settings

    return settings.load(repo) if settings.path(repo).exists() else settings.Settings()
