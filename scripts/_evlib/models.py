"""Models: candidates, ranking runs, pruning. (Aliases, the ledger, promote/rollback:
registry.py; GTO tags: gto.py.)

Layout (paths relative to the repository root):
  models/candidates/<version>--<run_id><suffix>   one file per run, tracked by DVC as one
                                                  directory (`dvc add models/candidates`)

A candidate's name ties it to its run (xetrack track_id) and version; its hash is recorded
by DVC in the models/candidates manifest.

Results DB: xetrack SQLite, table "default", several rows per run, read through runs.py
(a run's value of a column is its last non-null value, rows ordered by timestamp).
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from . import EVENTS_TABLE
from . import settings as _settings
from .atomic import copy_file
from .errors import NOT_FOUND, REFUSED, USAGE, EVError
from .proc import dvc
from .runs import Run, is_number, rank, read_runs
from .sql import is_sqlite_file

CANDIDATES = "models/candidates"
DEFAULT_DB = "results/experiments.db"
_CAND_RE = re.compile(r"^(?P<version>.+?)--(?P<run>[^.]+)(?P<suffix>\..*)?$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def hashes(path: str | os.PathLike) -> tuple[str, str]:
    from .dvcstore import hashes as _h

    return _h(Path(path))


# --- results DB -------------------------------------------------------------------------

def metrics_of(r: Run, s: _settings.Settings) -> dict:
    """A run's metrics as the project's settings define them (never params or lineage)."""
    return s.split(r.values)[1]


@dataclass
class Results:
    path: Path
    columns: list[str]
    runs: dict[str, Run]

    def require_column(self, column: str) -> None:
        if column not in self.columns:
            numeric = [c for c in self.columns if any(
                is_number(r.values.get(c)) for r in self.runs.values())
                and c not in _settings.META_COLS and not c.startswith("config_")]
            raise EVError(f"column {column!r} is not in {self.path.name} table {EVENTS_TABLE}",
                          code=USAGE, hint=f"pass --metric with one of: {', '.join(numeric)}")

    def get(self, run_id: str, version: str | None = None) -> Run:
        r = self.runs.get(run_id)
        if r is None:
            raise EVError(f"run {run_id} is not in {self.path}", code=NOT_FOUND,
                          hint="list runs with `model_manager.py list` (check --db)")
        if version is not None and r.version != version:
            raise EVError(f"run {run_id} has version {r.version}, not {version}",
                          code=NOT_FOUND, hint=f"pass --version {r.version} or another run")
        return r


def load_results(db: str | os.PathLike, run_id: str | None = None) -> Results:
    """Read the runs of a xetrack results DB (read-only), aggregated per track_id.

    run_id: read only that run's rows (for get()).
    """
    path = Path(db)
    if not path.exists():
        tracked = path.with_name(path.name + ".dvc").exists()
        raise EVError(f"results DB {path} does not exist", code=USAGE,
                      hint="it is tracked by DVC but not in the workspace: run `dvc pull`"
                           if tracked else
                           "pass --db with the results DB your runs logged to")
    if not is_sqlite_file(path):
        raise EVError(f"{path} is not a SQLite database", code=USAGE,
                      hint="pass --db with a xetrack SQLite results DB")
    try:
        table = read_runs(path, track_id=run_id)
    except sqlite3.Error as exc:
        raise EVError(f"cannot read {path}: {exc}", hint="check the file is a xetrack DB"
                      ) from exc
    if table.columns is None:
        raise EVError(f"{path} has no xetrack table {EVENTS_TABLE!r}", code=USAGE,
                      hint="pass --db with the DB a xetrack Tracker wrote")
    if "track_id" not in table.columns:
        raise EVError(f"{path} table {EVENTS_TABLE} has no track_id column", code=USAGE,
                      hint="pass --db with the DB a xetrack Tracker wrote")
    return Results(path, table.columns, table.runs)


# --- candidates -------------------------------------------------------------------------

@dataclass
class Candidate:
    path: str  # relative to the repo
    version: str
    run_id: str
    suffix: str


def _dvc_add(repo: Path, target: str) -> None:
    """`dvc add target`; a failure quotes DVC's own error line and says what to do."""
    try:
        dvc(repo, "add", target)
    except EVError as exc:
        if exc.hint:  # proc's hint (the lock and who holds it, missing objects) says more
            raise
        raise EVError(exc.message, code=exc.code, hint=(
            f"fix what DVC says, then re-run (or run `dvc add {target}` yourself)")) from exc


def check_name(value: str, what: str) -> str:
    if what == "run id" and not _RUN_ID_RE.match(value or ""):
        raise EVError(f"bad run id {value!r}: use letters, digits, '_' and '-' only",
                      code=USAGE, hint="pass the run's xetrack track_id")
    if what == "version" and (not _VERSION_RE.match(value or "") or "--" in value):
        # it names a git tag, a shard folder and candidate files: a tag-safe name only
        raise EVError(f"bad version {value!r}: letters, digits, '.', '_', '+' and '-' only "
                      f"(no '--'), starting with a letter or digit", code=USAGE,
                      hint="use a tag-like name such as e0.2.0")
    if what == "run id" and "--" in value:
        raise EVError(f"bad run id {value!r}: '--' separates version and run id",
                      code=USAGE, hint="pass the run's xetrack track_id")
    return value


def candidate_name(version: str, run_id: str, suffix: str) -> str:
    return f"{version}--{run_id}{suffix}"


def scan_candidates(repo: Path) -> list[Candidate]:
    d = repo / CANDIDATES
    out = []
    if d.is_dir():
        for p in sorted(d.iterdir()):
            m = _CAND_RE.match(p.name)
            if p.is_file() and not p.name.startswith(".") and m:
                out.append(Candidate(f"{CANDIDATES}/{p.name}", m["version"], m["run"],
                                     m["suffix"] or ""))
    return out


def find_candidate(repo: Path, version: str | None, run_id: str) -> Candidate | None:
    found = [c for c in scan_candidates(repo) if c.run_id == run_id
             and (version is None or c.version == version)]
    if len(found) > 1:
        raise EVError(f"several candidate files for run {run_id}: "
                      f"{', '.join(c.path for c in found)}", code=USAGE,
                      hint="delete all but one, or pass --model PATH")
    return found[0] if found else None


# --- commands ---------------------------------------------------------------------------

def add_candidate(repo: Path, *, db: Path, run_id: str, model: Path, version: str | None,
                  force: bool, track: bool, dry_run: bool) -> dict:
    check_name(run_id, "run id")
    if not model.is_file():
        raise EVError(f"model file {model} does not exist", code=USAGE,
                      hint="pass --model with the trained model's path")
    r = load_results(db, run_id).get(run_id, version)
    if not r.version:
        raise EVError(f"run {run_id} has no version column value", code=USAGE,
                      hint="log runs with Tracker(params={'version': ...})")
    check_name(str(r.version), "version")
    dest_rel = f"{CANDIDATES}/{candidate_name(str(r.version), run_id, ''.join(model.suffixes[-1:]))}"
    dest = repo / dest_rel
    other = find_candidate(repo, str(r.version), run_id)
    md5, sha = hashes(model)
    res = {"run_id": run_id, "version": r.version, "candidate": dest_rel, "sha256": sha,
           "md5": md5, "source": str(model), "dry_run": dry_run, "tracked": False}
    if other and other.path != dest_rel:
        raise EVError(f"run {run_id} already has candidate {other.path}", code=REFUSED,
                      hint="delete it first, or promote it as it is")
    if dest.exists() and hashes(dest)[0] == md5:
        res["unchanged"] = True
    elif dest.exists() and not force:
        raise EVError(f"{dest_rel} exists with different bytes", code=REFUSED,
                      hint="pass --force to replace it (the old bytes stay in the DVC cache "
                           "if models/candidates was dvc-added)")
    else:
        res["unchanged"] = False
        if not dry_run:
            copy_file(model, dest)
    if track and not dry_run:
        _dvc_add(repo, CANDIDATES)
        res["tracked"] = True
    return res


def _run_for_promote(repo: Path, db: Path, run_id: str | None, version: str | None,
                     model: Path | None) -> tuple[Run | None, str, Path]:
    """The run (or None), the source as recorded, and the source file."""
    r = None
    if run_id is not None:
        check_name(run_id, "run id")
        r = load_results(db, run_id).get(run_id, version)
    if model is not None:
        if not model.is_file():
            raise EVError(f"model file {model} does not exist", code=USAGE,
                          hint="pass --model with a model file path")
        try:
            src = os.path.relpath(model, repo)
        except ValueError:
            src = str(model)
        return r, src, model
    if r is None:
        raise EVError("nothing to promote", code=USAGE, hint="pass --run-id ID (its candidate "
                      "is promoted) or --model PATH")
    c = find_candidate(repo, None if r.version is None else str(r.version), run_id)
    if c is None:
        raise EVError(f"run {run_id} has no candidate model in {CANDIDATES}/", code=NOT_FOUND,
                      hint=f"add it with `model_manager.py add-candidate --run-id {run_id} "
                           "--model PATH`, or pass --model PATH")
    return r, c.path, repo / c.path


def held_by_aliases(repo: Path) -> list[tuple[str, str | None, str | None, str | None]]:
    """(alias, run id, source path, md5) of the model each alias holds now: never pruned."""
    from . import registry

    out = []
    for a in registry.aliases(repo):
        info = registry.alias_info(repo, a)
        if info is not None:
            ok = info["in_ledger"]
            out.append((a.name, info["run_id"] if ok else None,
                        info["source"] if ok else None, info["dvc_md5"]))
    return out


def _holder(held, c: Candidate, md5: str | None = None) -> str | None:
    for name, run_id, source, amd5 in held:
        if c.run_id == run_id or c.path == source or (md5 and md5 == amd5):
            return name
    return None


def ranked_runs(repo: Path, results: Results, metric: str, mode: str,
                version: str | None) -> dict:
    results.require_column(metric)
    runs = [r for r in results.runs.values() if version is None or r.version == version]
    cands = scan_candidates(repo)
    by_run: dict[str, list[Candidate]] = {}
    for c in cands:
        by_run.setdefault(c.run_id, []).append(c)
    held = held_by_aliases(repo)
    out, missing = [], []
    for i, r in enumerate(rank(runs, metric, mode), 1):
        files = [c.path for c in by_run.get(r.track_id, [])]
        holders = sorted({h for c in by_run.get(r.track_id, []) if (h := _holder(held, c))}
                         | {n for n, rid, _, _ in held if rid == r.track_id})
        row = {"rank": i, "run_id": r.track_id, "version": r.version, metric: r.value(metric),
               "candidate": files[0] if files else None,
               "production": "production" in holders, "aliases": holders,
               "rows": r.rows}
        out.append(row)
        if not files:
            mp = r.values.get("model_path")
            missing.append({"run_id": r.track_id, "version": r.version, "model_path": mp})
    orphans = [c.path for c in cands if c.run_id not in results.runs
               and (version is None or c.version == version)]
    return {"ranked_by": {"column": metric, "mode": mode,
                          "per_run": "last non-null value; runs without it rank last"},
            "runs": out, "missing_models": missing, "orphan_candidates": orphans}


def _not_on_remote(repo: Path, items: list[dict]) -> tuple[str, list[dict]]:
    """(the remote as an error line names it, the items whose bytes it lacks): the default
    DVC remote; a local directory is looked into in-process, another is asked through `dvc
    status -c` of the candidates' .dvc file (an item that file does not record is missing)."""
    from .dvcmeta import default_remote, find_object

    name, url = default_remote(repo)
    if url is None:
        return "any DVC remote (no default remote is set)", list(items)
    where = f"DVC remote '{name}'"
    if "://" not in url or url.startswith("file://"):
        root = Path(url.removeprefix("file://"))
        return where, [i for i in items if find_object(root, i["md5"]) is None]
    from .proc import dvc_cloud_status

    meta = repo / f"{CANDIDATES}.dvc"
    st = dvc_cloud_status(repo, str(meta))[0] if meta.is_file() else None
    if st is None:
        return f"{where} (dvc status -c could not tell)", list(items)
    recorded = _recorded(repo)
    return where, [i for i in items if i["path"] in st or recorded.get(i["path"]) != i["md5"]]


def _recorded(repo: Path) -> dict[str, str]:
    """path -> md5 of each file the candidates' .dvc file records (its .dir object)."""
    from .dvcmeta import cache_dir, dir_entries, find_object, first_md5

    meta = repo / f"{CANDIDATES}.dvc"
    md5 = first_md5(meta.read_text()) if meta.is_file() else None
    obj = find_object(cache_dir(repo), md5) if md5 and md5.endswith(".dir") else None
    if obj is None:
        return {}
    # an unreadable listing records nothing: every candidate then counts as not pushed
    return {f"{CANDIDATES}/{rel}": md5 for rel, md5 in dir_entries(obj) or []}


def _push_hint(remote: str) -> str:
    first = ("add one (dvc remote add -d NAME URL), then run dvc push "
             if remote.startswith("any ") else "run dvc push ")
    return (first + f"{CANDIDATES}.dvc and re-run, or pass --force to delete them anyway "
            "(then they are only in this machine's DVC cache, until a dvc gc)")


def prune(repo: Path, *, results: Results, keep: int, metric: str, mode: str,
          version: str | None, yes: bool, include_untracked: bool = False,
          force: bool = False) -> dict:
    """Delete candidates ranked below the top `keep`. Never deleted: any alias's model, and
    (unless include_untracked) a file whose bytes are not in the DVC cache (never recorded:
    deleting it would lose them). A file whose bytes the default DVC remote lacks would be
    left only in this machine's cache (which `dvc gc` empties): refused (REFUSED, nothing
    deleted) unless force; a dry run lists them under not_pushed."""
    from .dvcstore import cache_object

    results.require_column(metric)
    cands = [c for c in scan_candidates(repo) if version is None or c.version == version]

    def val(c: Candidate):
        r = results.runs.get(c.run_id)
        return r.value(metric) if r else None

    if cands and all(val(c) is None for c in cands):
        raise EVError(f"no candidate's run has a {metric} value in {results.path}",
                      code=REFUSED, hint="check --db and --metric; nothing deleted")
    ranked = rank(cands, metric, mode, value_of=val)
    held = held_by_aliases(repo)
    kept, delete = [], []
    for i, c in enumerate(ranked):
        item = {"path": c.path, "run_id": c.run_id, "version": c.version, metric: val(c)}
        why = "top" if i < keep else None
        if why is None:
            md5 = hashes(repo / c.path)[0]
            item["md5"] = md5
            holder = _holder(held, c, md5)
            if holder:
                why = holder if holder == "production" else f"alias {holder}"
            elif not cache_object(repo, md5).is_file():
                if not include_untracked:
                    why = "not in the DVC cache (pass --include-untracked to delete it)"
                item["untracked"] = True  # deleted knowingly: not asked of the remote
        (kept if why else delete).append(item | ({"kept_because": why} if why else {}))
    remote, unpushed = _not_on_remote(repo, [i for i in delete if not i.get("untracked")]) \
        if delete else ("", [])
    res = {"ranked_by": {"column": metric, "mode": mode}, "keep": keep, "kept": kept,
           "deleted" if yes else "would_delete": delete, "dry_run": not yes,
           "tracked": False, "not_pushed": [i["path"] for i in unpushed],
           "remote": remote or None}
    if unpushed and yes and not force:
        names = ", ".join(f"{i['path']} (md5 {i['md5'][:12]})" for i in unpushed[:3])
        more = f" and {len(unpushed) - 3} more" if len(unpushed) > 3 else ""
        raise EVError(f"{len(unpushed)} candidate(s) to delete are not on {remote}: "
                      f"{names}{more}; nothing deleted", code=REFUSED,
                      hint=_push_hint(remote))
    if yes:
        # each is in the cache and on the remote (unless --include-untracked or --force
        # said otherwise): a way back
        for item in delete:
            (repo / item["path"]).unlink(missing_ok=True)
        if (repo / CANDIDATES).is_dir():
            _dvc_add(repo, CANDIDATES)
            res["tracked"] = True
    return res
