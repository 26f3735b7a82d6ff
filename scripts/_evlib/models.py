"""Models: candidates, promotion to production, rollback, pruning and the production ledger.

Layout (paths relative to the repository root):
  models/candidates/<version>--<run_id><suffix>   one file per run, tracked by DVC as one
                                                  directory (`dvc add models/candidates`)
  models/production/model.bin (+ .dvc)            the production model, tracked by DVC
  models/production/ledger.jsonl                  append-only promotion ledger, tracked by git

A candidate's name ties it to its run (xetrack track_id) and version; its hash is recorded
by DVC in the models/candidates manifest. The ledger has one JSON object per promote or
rollback; the production history is a stack: promote pushes, rollback pops.

Results DB: xetrack SQLite, table "default", several rows per run, read through runs.py
(a run's value of a column is its last non-null value, rows ordered by timestamp).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from . import EVENTS_TABLE
from .atomic import append_line, atomic_path, copy_file
from .dvcmeta import cache_dir, first_md5, object_path
from .errors import NOT_FOUND, REFUSED, USAGE, EVError
from .proc import dvc, git, run
from .repo import head_commit, is_dirty, resolve_commit
from .runs import Run, is_number, rank, read_runs
from .sql import is_sqlite_file

CANDIDATES = "models/candidates"
PRODUCTION = "models/production/model.bin"
PRODUCTION_DVC = PRODUCTION + ".dvc"
LEDGER = "models/production/ledger.jsonl"
DEFAULT_DB = "results/experiments.db"

# Columns that describe a row, not a result: never reported as metrics.
_NOT_METRICS = {"timestamp", "track_id", "git_dirty"}
_CAND_RE = re.compile(r"^(?P<version>.+?)--(?P<run>[^.]+)(?P<suffix>\..*)?$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def hashes(path: str | os.PathLike) -> tuple[str, str]:
    """(md5, sha256) of a file in one read: DVC names objects by md5, the ledger adds sha256."""
    md5, sha = hashlib.md5(), hashlib.sha256()  # noqa: S324 - md5 is DVC's object name
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- results DB -------------------------------------------------------------------------

def metrics_of(r: Run) -> dict:
    """A run's numeric results as recorded in the ledger (no config_ params, no row meta)."""
    return {k: v for k, v in r.values.items() if is_number(v)
            and k not in _NOT_METRICS and not k.startswith("config_")}


@dataclass
class Results:
    path: Path
    columns: list[str]
    runs: dict[str, Run]

    def require_column(self, column: str) -> None:
        if column not in self.columns:
            numeric = [c for c in self.columns if any(
                is_number(r.values.get(c)) for r in self.runs.values())
                and c not in _NOT_METRICS and not c.startswith("config_")]
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


def check_name(value: str, what: str) -> str:
    if what == "run id" and not _RUN_ID_RE.match(value or ""):
        raise EVError(f"bad run id {value!r}: use letters, digits, '_' and '-' only",
                      code=USAGE, hint="pass the run's xetrack track_id")
    if what == "version" and (not value or "/" in value or "--" in value
                              or value.startswith(".")):
        raise EVError(f"bad version {value!r}: no '/', no '--', not starting with '.'",
                      code=USAGE, hint="use a tag-like name such as e0.2.0")
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


# --- DVC state --------------------------------------------------------------------------

def cache_object(repo: Path, md5: str) -> Path:
    return object_path(cache_dir(repo), md5)


def show(repo: Path, rev: str, path: str) -> str | None:
    cp = run(["git", "show", f"{rev}:{path}"], cwd=repo, check=False)
    return cp.stdout if cp.returncode == 0 else None


def resolve_rev(repo: Path, rev: str) -> str:
    commit = resolve_commit(repo, rev)
    if commit is None:
        raise EVError(f"no tag or commit named {rev!r}", code=NOT_FOUND,
                      hint="list tags with `git tag -l -n1`")
    return commit


def fetch_object(repo: Path, md5: str, dest_tmp: Path, revs: list[str]) -> tuple[str, str]:
    """Write the bytes of DVC object md5 to dest_tmp: from the cache, else via `dvc get` at
    the first rev whose production .dvc file names md5 (the remote). Checks the md5.
    Returns (where from: "cache" or "remote", sha256)."""
    obj = cache_object(repo, md5)
    if obj.is_file():
        with open(obj, "rb") as fi, open(dest_tmp, "wb") as fo:
            while chunk := fi.read(1 << 20):
                fo.write(chunk)
        got, sha = hashes(dest_tmp)
        if got == md5:  # else the cache object is damaged: try the remote
            return "cache", sha
    for rev in revs:
        if first_md5(show(repo, rev, PRODUCTION_DVC)) != md5:
            continue
        dvc(repo, "get", str(repo), PRODUCTION, "--rev", rev, "-o", str(dest_tmp), "--force")
        got, sha = hashes(dest_tmp)
        if got != md5:
            raise EVError(f"the remote's copy of {md5} has md5 {got}", hint="run `dvc push` "
                          "from a machine with a good copy, then retry")
        return "remote", sha
    raise EVError(f"model {md5} is neither in the DVC cache ({obj}) nor named by any "
                  f"commit's {PRODUCTION_DVC}", code=NOT_FOUND,
                  hint="run `dvc fetch` for the commit that had it, or restore the cache")


def revs_with_production(repo: Path) -> list[str]:
    out = git(repo, "log", "--all", "--format=%H", "--", PRODUCTION_DVC)
    return out.split()


# --- ledger -----------------------------------------------------------------------------

def parse_ledger(text: str | None) -> list[dict]:
    entries = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EVError(f"{LEDGER} line {n} is not JSON: {exc.msg}", hint="restore it "
                          f"from git (`git checkout -- {LEDGER}`)") from exc
    return entries


def read_ledger(repo: Path, rev: str | None = None) -> list[dict]:
    if rev is None:
        p = repo / LEDGER
        return parse_ledger(p.read_text() if p.exists() else None)
    return parse_ledger(show(repo, rev, LEDGER))


def _state(entry: dict) -> dict:
    return {k: entry.get(k) for k in ("run_id", "version", "source", "time", "metrics")} | {
        "md5": (entry.get("model") or {}).get("md5"),
        "sha256": (entry.get("model") or {}).get("sha256")}


def production_stack(entries: list[dict]) -> list[dict]:
    """Replay the ledger: promote pushes, rollback pops. The last item is production."""
    stack: list[dict] = []
    for e in entries:
        if e.get("action") == "promote":
            prev = e.get("previous") or {}
            # Production before this promote was not the ledger's (before the ledger, or
            # saved by --force): it is what a rollback of this promote must restore.
            if prev.get("md5") and (not stack or stack[-1]["md5"] != prev["md5"]):
                stack.append({"run_id": prev.get("run_id"), "version": prev.get("version"),
                              "source": prev.get("source") or "before the ledger",
                              "md5": prev["md5"], "sha256": prev.get("sha256"),
                              "time": None, "metrics": None})
            stack.append(_state(e))
        elif e.get("action") == "rollback":
            if stack:
                stack.pop()
            st = _state(e)
            if not stack or stack[-1]["md5"] != st["md5"]:
                stack.append(st)
    return stack


def production_info(repo: Path, rev: str | None = None, *, hash_disk: bool = True
                    ) -> dict | None:
    """What is in production (working tree, or at rev): hashes, ledger entry, DVC sync.

    hash_disk=False trusts model.bin.dvc (no read of a possibly large model) when it exists.
    """
    if rev is None:
        dvc_path = repo / PRODUCTION_DVC
        dvc_md5 = first_md5(dvc_path.read_text()) if dvc_path.exists() else None
        model = repo / PRODUCTION
        disk_md5 = disk_sha = None
        if model.is_file() and (hash_disk or dvc_md5 is None):
            disk_md5, disk_sha = hashes(model)
        if dvc_md5 is None and disk_md5 is None:
            return None
    else:
        dvc_md5 = first_md5(show(repo, rev, PRODUCTION_DVC))
        disk_md5 = None
        if dvc_md5 is None:
            return None
    stack = production_stack(read_ledger(repo, rev))
    top = stack[-1] if stack else None
    md5 = dvc_md5 or disk_md5
    entry = top if top and top["md5"] == md5 else None
    info = {"path": PRODUCTION, "md5": md5, "dvc_md5": dvc_md5,
            "run_id": entry and entry["run_id"], "version": entry and entry["version"],
            "source": entry and entry["source"], "promoted_at": entry and entry["time"],
            "metrics": entry and entry["metrics"], "sha256": entry and entry["sha256"],
            "in_ledger": entry is not None,
            "in_cache": bool(dvc_md5) and cache_object(repo, dvc_md5).is_file(),
            "rollback_to": (stack[-2] if len(stack) > 1 and entry else None)}
    if rev is None:
        info["disk_md5"] = disk_md5
        info["in_sync"] = disk_md5 is not None and disk_md5 == dvc_md5
        info["disk_sha256"] = disk_sha
        if disk_sha is not None and info["in_sync"]:  # md5 and sha256 describe one file
            info["sha256"] = disk_sha
    else:
        info["rev"] = rev
    return info


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
        dvc(repo, "add", "-q", CANDIDATES)
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


def _production_lock(repo: Path):
    """One promote or rollback at a time: each rewrites the ledger (read, append, replace),
    and two at once would drop an entry."""
    from .atomic import held_lock

    d = repo / "models" / "production"
    d.mkdir(parents=True, exist_ok=True)
    return held_lock(d, wait_s=120, message="another promote or rollback has held "
                     f"{PRODUCTION} for over 120 s", hint="wait for it to finish, then re-run")


def promote(repo: Path, **kw) -> dict:
    with _production_lock(repo):
        return _promote(repo, **kw)


def rollback(repo: Path, **kw) -> dict:
    with _production_lock(repo):
        return _rollback(repo, **kw)


def _promote(repo: Path, *, db: Path, run_id: str | None, version: str | None,
             model: Path | None, force: bool, dry_run: bool) -> dict:
    r, source, src_file = _run_for_promote(repo, db, run_id, version, model)
    cur = production_info(repo)
    md5, sha = hashes(src_file)
    prev = None
    if cur:
        prev = {"md5": cur["dvc_md5"] or cur["disk_md5"], "sha256": cur.get("sha256"),
                "run_id": cur["run_id"], "version": cur["version"], "source": cur["source"]}
    entry = {"time": _now(), "action": "promote", "run_id": r and r.track_id,
             "version": (r and r.version) or version, "metrics": metrics_of(r) if r else {},
             "model": {"path": PRODUCTION, "md5": md5, "sha256": sha,
                       "size": src_file.stat().st_size},
             "source": source, "previous": prev, "git_commit": head_commit(repo),
             "git_dirty": is_dirty(repo)}
    res = {"action": "promote", "dry_run": dry_run, "entry": entry, "unchanged": False}
    if cur and cur["md5"] == md5 and cur["in_sync"] and cur["run_id"] == entry["run_id"] \
            and cur["in_ledger"]:
        res["unchanged"] = True
        return res
    save_first = False
    # Bytes on disk that DVC has not recorded would be lost: refuse (a missing file is not).
    if cur and not cur["in_sync"] and cur["disk_md5"] is not None:
        if not force:
            what = ("is not tracked by DVC" if not cur["dvc_md5"] else
                    "has changes DVC has not recorded")
            raise EVError(f"{PRODUCTION} {what}; promoting would lose those bytes",
                          code=REFUSED, hint=f"keep them with `dvc add {PRODUCTION}`, discard "
                          f"them with `dvc checkout --force {PRODUCTION}`, or pass --force "
                          "(saves them to the DVC cache first)")
        save_first = True
    if dry_run:
        return res
    if save_first:  # --force: keep a way back to the unrecorded bytes
        dvc(repo, "add", "-q", PRODUCTION)
        entry["previous"]["md5"] = cur["disk_md5"]
        entry["previous"]["sha256"] = cur["disk_sha256"]
        entry["previous"]["source"] = "unrecorded change (saved by promote --force)"
    copy_file(src_file, repo / PRODUCTION)
    dvc(repo, "add", "-q", PRODUCTION)
    append_line(repo / LEDGER, json.dumps(entry, default=str, sort_keys=False))
    return res


def _rollback(repo: Path, *, force: bool, dry_run: bool) -> dict:
    cur = production_info(repo)
    stack = production_stack(read_ledger(repo))
    if cur is None or not stack:
        raise EVError("no production model has been promoted", code=REFUSED,
                      hint="nothing to roll back; promote a model first")
    if not cur["in_ledger"]:
        raise EVError(f"{PRODUCTION} (md5 {cur['md5']}) is not the ledger's production model "
                      f"({stack[-1]['md5']})", code=REFUSED,
                      hint="it was changed outside model_manager.py; promote what you want")
    if not cur["in_sync"] and cur["disk_md5"] is not None and not force:
        raise EVError(f"{PRODUCTION} has changes DVC has not recorded; rollback would lose "
                      "them", code=REFUSED, hint="discard them with "
                      f"`dvc checkout --force {PRODUCTION}`, or pass --force")
    if len(stack) < 2:
        raise EVError("no previous production model in the ledger", code=REFUSED,
                      hint="the first promotion cannot be rolled back; promote another model")
    target, top = stack[-2], stack[-1]
    entry = {"time": _now(), "action": "rollback", "run_id": target["run_id"],
             "version": target["version"], "metrics": target["metrics"],
             "model": {"path": PRODUCTION, "md5": target["md5"], "sha256": target["sha256"]},
             "source": target["source"],
             "previous": {"md5": top["md5"], "sha256": top["sha256"], "run_id": top["run_id"],
                          "version": top["version"], "source": top["source"]},
             "git_commit": head_commit(repo), "git_dirty": is_dirty(repo)}
    res = {"action": "rollback", "dry_run": dry_run, "entry": entry}
    if dry_run:
        return res
    dest = repo / PRODUCTION
    with atomic_path(dest) as tmp:
        res["fetched_from"], sha = fetch_object(repo, target["md5"], tmp,
                                                revs_with_production(repo))
        if target["sha256"] and sha != target["sha256"]:
            raise EVError(f"restored bytes have sha256 {sha}, the ledger says "
                          f"{target['sha256']}", hint="the ledger or the cache is damaged")
        entry["model"]["sha256"] = sha
        entry["model"]["size"] = tmp.stat().st_size
    dvc(repo, "add", "-q", PRODUCTION)
    append_line(repo / LEDGER, json.dumps(entry, default=str))
    return res


def production_run_ids(repo: Path) -> tuple[set[str], set[str]]:
    """Run ids and source paths the ledger's production model came from (never pruned)."""
    info = production_info(repo, hash_disk=False)
    runs, sources = set(), set()
    if info and info["in_ledger"]:
        if info["run_id"]:
            runs.add(info["run_id"])
        if info["source"]:
            sources.add(info["source"])
    return runs, sources


def ranked_runs(repo: Path, results: Results, metric: str, mode: str,
                version: str | None) -> dict:
    results.require_column(metric)
    runs = [r for r in results.runs.values() if version is None or r.version == version]
    cands = scan_candidates(repo)
    by_run: dict[str, list[Candidate]] = {}
    for c in cands:
        by_run.setdefault(c.run_id, []).append(c)
    prod_runs, prod_sources = production_run_ids(repo)
    out, missing = [], []
    for i, r in enumerate(rank(runs, metric, mode), 1):
        files = [c.path for c in by_run.get(r.track_id, [])]
        row = {"rank": i, "run_id": r.track_id, "version": r.version, metric: r.value(metric),
               "candidate": files[0] if files else None,
               "production": r.track_id in prod_runs or bool(set(files) & prod_sources),
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


def prune(repo: Path, *, results: Results, keep: int, metric: str, mode: str,
          version: str | None, yes: bool) -> dict:
    results.require_column(metric)
    cands = [c for c in scan_candidates(repo) if version is None or c.version == version]

    def val(c: Candidate):
        r = results.runs.get(c.run_id)
        return r.value(metric) if r else None

    if cands and all(val(c) is None for c in cands):
        raise EVError(f"no candidate's run has a {metric} value in {results.path}",
                      code=REFUSED, hint="check --db and --metric; nothing deleted")
    ranked = rank(cands, metric, mode, value_of=val)
    prod_runs, prod_sources = production_run_ids(repo)
    kept, delete = [], []
    for i, c in enumerate(ranked):
        why = ("top" if i < keep else "production" if c.run_id in prod_runs
               or c.path in prod_sources else None)
        item = {"path": c.path, "run_id": c.run_id, "version": c.version, metric: val(c)}
        (kept if why else delete).append(item | ({"kept_because": why} if why else {}))
    res = {"ranked_by": {"column": metric, "mode": mode}, "keep": keep, "kept": kept,
           "deleted" if yes else "would_delete": delete, "dry_run": not yes,
           "tracked": False}
    if yes:
        for item in delete:
            (repo / item["path"]).unlink()
        if (repo / CANDIDATES).is_dir():
            dvc(repo, "add", "-q", CANDIDATES)
            res["tracked"] = True
    return res


def get_model(repo: Path, *, rev: str, out: Path, force: bool, dry_run: bool) -> dict:
    commit = resolve_rev(repo, rev)
    md5 = first_md5(show(repo, commit, PRODUCTION_DVC))
    if md5 is None:
        raise EVError(f"{rev} has no {PRODUCTION_DVC}", code=NOT_FOUND,
                      hint="no model was in production there; see `model_manager.py history "
                           "--tags`")
    if out.exists() and not force:
        raise EVError(f"{out} already exists", code=REFUSED,
                      hint="pass another -o path, or --force to replace it")
    entry = next((s for s in reversed(production_stack(read_ledger(repo, commit)))
                  if s["md5"] == md5), None)
    res = {"rev": rev, "commit": commit, "md5": md5, "out": str(out), "dry_run": dry_run,
           "run_id": entry and entry["run_id"], "version": entry and entry["version"]}
    if dry_run:
        return res
    with atomic_path(out) as tmp:
        res["fetched_from"], res["sha256"] = fetch_object(repo, md5, tmp, [commit])
    return res


def history(repo: Path, rev: str | None) -> list[dict]:
    if rev is not None:
        resolve_rev(repo, rev)
    return read_ledger(repo, rev)


def tags_production(repo: Path) -> list[dict]:
    """For each tag: the production model's md5 there and the ledger's run for it."""
    out = []
    for tag in git(repo, "tag", "-l", "--sort=creatordate").split():
        info = production_info(repo, tag)
        out.append({"tag": tag, "md5": info and info["md5"],
                    "run_id": info and info["run_id"], "version": info and info["version"],
                    "in_ledger": bool(info and info["in_ledger"])})
    return out
