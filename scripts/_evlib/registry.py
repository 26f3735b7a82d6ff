"""The model registry: aliases (production, challenger, ...), their ledgers, promote/rollback.

Per alias (production is the default; its path comes from ev.yaml `production_model`):
  <dir>/model.bin (+ .dvc)   the alias's model, tracked by DVC
  <dir>/ledger.jsonl         one JSON line per change (promote or rollback), tracked by git
with <dir> = models/production for production and models/<alias> for any other alias.

Every change is one ledger entry with a sequence number `seq`, a reason, the run's training
commit and data md5s (from its lineage columns), the commit at the time of the change and
only the run's metrics (settings.split). Replaying the ledger gives the state after every
entry: promote pushes a model, `rollback` pops one, `rollback --to N` restores the state
entry N left (any past state; rolling back a rollback is `--to` the state before it).

Writing a change (one recovery rule, `Intent`): the new bytes go into the DVC cache first
(hashed once while copied, fsynced); then a write-ahead intent record names the complete
change; then model.bin, model.bin.dvc, the ledger line (and with `gto: true` a commit and
GTO tags) are written, each step idempotent; the intent is removed last. Killed anywhere,
the next promote/rollback/status of that alias finds the intent and completes it (the new
object is durable), or rolls it back when the object is not there, and says which.
No `dvc add` is run: the object and the .dvc file are written the way DVC writes them, so
another dvc holding the repository lock cannot fail a promote half-way.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import settings as _settings
from .atomic import append_line, held_lock, sha256_file, write_text
from .dvcmeta import first_md5
from .dvcstore import (
    cache_object,
    checkout,
    disk_md5,
    dvc_text,
    ensure_gitignore,
    ev_tmp,
    hashes,
    remember,
    remove_temps,
    store_object,
)
from .errors import NOT_FOUND, REFUSED, USAGE, EVError
from .proc import git, run
from .repo import dirty_paths, head_commit, resolve_commit

DEFAULT_ALIAS = "production"
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Alias:
    name: str
    model: str  # repo-relative path of model.bin
    ledger: str

    @property
    def dvc(self) -> str:
        return self.model + ".dvc"

    @property
    def dir(self) -> str:
        return os.path.dirname(self.model)


def alias(repo: Path, name: str | None = None, s: _settings.Settings | None = None) -> Alias:
    name = name or DEFAULT_ALIAS
    if not _ALIAS_RE.match(name):
        raise EVError(f"bad alias {name!r}: lower-case letters, digits, '-' and '_'",
                      code=USAGE, hint="e.g. --alias challenger")
    s = s or _settings.load(repo)
    prod = s.production_model
    if name == DEFAULT_ALIAS:
        model = prod
    else:
        top = os.path.dirname(os.path.dirname(prod))
        model = "/".join(p for p in (top, name, os.path.basename(prod)) if p)
    return Alias(name, model, f"{os.path.dirname(model)}/ledger.jsonl".lstrip("/"))


def aliases(repo: Path, s: _settings.Settings | None = None) -> list[Alias]:
    """production plus every alias that has a ledger in the working tree."""
    s = s or _settings.load(repo)
    prod = alias(repo, DEFAULT_ALIAS, s)
    out = [prod]
    top = repo / os.path.dirname(prod.dir)
    if top.is_dir():
        for d in sorted(top.iterdir()):
            if d.name != os.path.basename(prod.dir) and _ALIAS_RE.match(d.name) and \
                    (d / "ledger.jsonl").is_file():
                out.append(alias(repo, d.name, s))
    return out


# --- the ledger and its states -------------------------------------------------------------

def parse_ledger(text: str | None, name: str) -> list[dict]:
    entries = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EVError(f"{name} line {n} is not JSON: {exc.msg}",
                          hint=f"restore it from git (`git checkout -- {name}`)") from exc
        e.setdefault("seq", len(entries) + 1)
        entries.append(e)
    return entries


def show(repo: Path, rev: str, path: str) -> str | None:
    cp = run(["git", "show", f"{rev}:{path}"], cwd=repo, check=False)
    return cp.stdout if cp.returncode == 0 else None


def read_ledger(repo: Path, a: Alias, rev: str | None = None) -> list[dict]:
    if rev is None:
        p = repo / a.ledger
        return parse_ledger(p.read_text() if p.exists() else None, a.ledger)
    return parse_ledger(show(repo, rev, a.ledger), a.ledger)


def _state(e: dict) -> dict:
    m = e.get("model") or {}
    return {"seq": e.get("seq"), "run_id": e.get("run_id"), "version": e.get("version"),
            "source": e.get("source"), "time": e.get("time"), "metrics": e.get("metrics"),
            "md5": m.get("md5"), "sha256": m.get("sha256"), "size": m.get("size")}


def replay(entries: list[dict]) -> list[list[dict]]:
    """The stack after each entry (list per entry). The last item of a stack is the model."""
    after: dict[int, list[dict]] = {}
    out, stack = [], []
    for e in entries:
        if e.get("action") == "promote":
            prev = e.get("previous") or {}
            # Production before this promote was not the ledger's (before the ledger, or
            # saved by --force): it is what a rollback of this promote restores.
            if prev.get("md5") and (not stack or stack[-1]["md5"] != prev["md5"]):
                stack = [*stack, {"seq": None, "run_id": prev.get("run_id"),
                                  "version": prev.get("version"),
                                  "source": prev.get("source") or "before the ledger",
                                  "md5": prev["md5"], "sha256": prev.get("sha256"),
                                  "size": prev.get("size"), "time": None, "metrics": None}]
            stack = [*stack, _state(e)]
        elif e.get("action") == "rollback":
            to = e.get("restores")
            stack = list(after[to]) if e.get("mode") == "to" and to in after else stack[:-1]
            if not stack or stack[-1]["md5"] != (e.get("model") or {}).get("md5"):
                stack = [*stack, _state(e)]
        after[e.get("seq")] = stack  # entries of older bundles may lack seq
        out.append(stack)
    return out


def _entry_summary(e: dict | None) -> dict | None:
    if not e:
        return None
    return {k: e.get(k) for k in ("seq", "action", "time", "reason", "run_id", "version",
                                  "restores")}


def same_model(state: dict | None, md5: str | None, run_id: str | None) -> bool:
    """Restoring state would change nothing: the same bytes as the same run. (Bytes alone are
    not the identity: like promote, and like an MLflow or GTO alias moved to another version,
    a rollback to another run whose model is byte-identical is a change of the ledger.)"""
    return bool(state) and state["md5"] == md5 and state["run_id"] == run_id


def alias_info(repo: Path, a: Alias, rev: str | None = None) -> dict | None:
    """What the alias holds (working tree, or at rev): hashes, how it got there, DVC sync."""
    if rev is None:
        p = repo / a.dvc
        dvc_md5 = first_md5(p.read_text()) if p.exists() else None
        dmd5, dsha = disk_md5(repo, a, dvc_md5)
        if dvc_md5 is None and dmd5 is None:
            return None
    else:
        dvc_md5, dmd5, dsha = first_md5(show(repo, rev, a.dvc)), None, None
        if dvc_md5 is None:
            return None
    entries = read_ledger(repo, a, rev)
    stacks = replay(entries)
    stack = stacks[-1] if stacks else []
    top = stack[-1] if stack else None
    md5 = dvc_md5 or dmd5
    entry = top if top and top["md5"] == md5 else None
    last = entries[-1] if entries else None
    # What status offers is what rollback accepts: it refuses a target that is the model
    # there now, unless model.bin is out of sync (then restoring it is a change).
    synced = rev is not None or (dmd5 is not None and dmd5 == dvc_md5)
    prev = stack[-2] if len(stack) > 1 and entry else None
    if prev and synced and same_model(prev, md5, entry["run_id"]):
        prev = None
    info = {"alias": a.name, "path": a.model, "md5": md5, "dvc_md5": dvc_md5,
            "run_id": entry and entry["run_id"], "version": entry and entry["version"],
            "source": entry and entry["source"], "metrics": entry and entry["metrics"],
            "sha256": entry and entry["sha256"], "in_ledger": entry is not None,
            "seq": last and last["seq"],
            "changed_by": _entry_summary(last) if entry else None,
            "promoted_at": entry and entry["time"],
            "in_cache": bool(dvc_md5) and cache_object(repo, dvc_md5).is_file(),
            "rollback_to": prev, "undo": None}
    undone = stacks[-2][-1] if len(stacks) > 1 and stacks[-2] else None
    if entry and last and last.get("action") == "rollback" and len(entries) > 1 \
            and not (synced and same_model(undone, md5, entry["run_id"])):
        info["undo"] = {"command": f"rollback --to {last['seq'] - 1}"
                        + ("" if a.name == DEFAULT_ALIAS else f" --alias {a.name}"),
                        "restores": undone}
    if rev is None:
        info["disk_md5"] = dmd5
        info["in_sync"] = dmd5 is not None and dmd5 == dvc_md5
        info["disk_sha256"] = dsha
        if dsha is not None and info["in_sync"]:
            info["sha256"] = dsha
    else:
        info["rev"] = rev
    return info


# --- the write-ahead intent -----------------------------------------------------------------

def _intent_path(repo: Path, a: Alias) -> Path:
    return ev_tmp(repo) / f"{a.name}.intent.json"


def _apply(repo: Path, a: Alias, intent: dict, s: _settings.Settings) -> None:
    """Steps after the intent is durable; each one idempotent, so a re-run may repeat it."""
    md5, size = intent["md5"], intent["size"]
    dest = repo / a.model
    have, _ = disk_md5(repo, a, md5)
    if have != md5:
        checkout(repo, md5, dest)
    remember(repo, a, md5)
    dvc_file = repo / a.dvc
    cur = dvc_file.read_text() if dvc_file.exists() else None
    if first_md5(cur) != md5:
        write_text(dvc_file, dvc_text(cur, md5, size, os.path.basename(a.model)))
    ensure_gitignore(repo, a)
    entries = read_ledger(repo, a)
    if not entries or entries[-1].get("id") != intent["entry"]["id"]:
        append_line(repo / a.ledger, json.dumps(intent["entry"], default=str))
    if intent.get("commit"):
        from . import gto
        gto.commit_and_tag(repo, a, intent, s)


def recover(repo: Path, a: Alias, s: _settings.Settings | None = None) -> dict | None:
    """Finish or undo a change a killed promote/rollback left; None when there was none.
    Called holding the alias's lock: the temp files a killed run left are removed first."""
    remove_temps(repo, repo / a.model)
    p = _intent_path(repo, a)
    if not p.exists():
        return None
    s = s or _settings.load(repo)
    try:
        intent = json.loads(p.read_text())
    except (ValueError, OSError):
        p.unlink()  # written atomically: unreadable means never complete, nothing applied
        return {"recovered": "discarded", "what": "an unreadable intent record"}
    e = intent["entry"]
    what = f"{e['action']} of {e.get('run_id') or e.get('source')} (ledger seq {e['seq']})"
    obj = cache_object(repo, intent["md5"])
    if obj.is_file() and obj.stat().st_size == intent["size"]:
        _apply(repo, a, intent, s)
        p.unlink()
        return {"recovered": "completed", "what": what, "seq": e["seq"],
                "request": intent.get("request"), "_entry": e}
    # The object is gone (a cache wiped after the kill): put the old state back.
    old = intent.get("old_dvc")
    dvc_file = repo / a.dvc
    if old is None:
        with contextlib.suppress(FileNotFoundError):
            dvc_file.unlink()
    else:
        write_text(dvc_file, old)
        old_md5 = first_md5(old)
        if old_md5 and cache_object(repo, old_md5).is_file():
            checkout(repo, old_md5, repo / a.model)
    p.unlink()
    return {"recovered": "rolled back", "what": what}


def production_lock(repo: Path, a: Alias, wait_s: float = 120):
    """One promote or rollback of an alias at a time (the ledger is read, appended, replaced)."""
    d = repo / a.dir
    d.mkdir(parents=True, exist_ok=True)
    return held_lock(d, wait_s=wait_s, message=f"another promote or rollback has held {a.model} "
                     "for over 120 s", hint="wait for it to finish, then re-run")


# --- promote / rollback ---------------------------------------------------------------------

def _lineage(values: dict) -> dict:
    """Training commit, dirty flag and data md5s of a run, from its lineage columns."""
    data = values.get("ev_data_md5")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            data = {"?": data}
    if data is None and values.get("data_hash") is not None:
        data = {"data_hash": values.get("data_hash")}
    dirty = values.get("ev_dirty", values.get("git_dirty"))
    return {"trained_commit": values.get("ev_commit") or values.get("git_commit"),
            "trained_dirty": None if dirty is None else bool(dirty), "data_md5": data}


def _guard_unrecorded(repo: Path, a: Alias, cur: dict | None, force: bool, verb: str,
                      save: bool = True) -> dict:
    """Bytes on disk DVC has not recorded would be lost: refuse, or (--force) save them."""
    if not cur or cur["in_sync"] or cur["disk_md5"] is None:
        return {}
    if not force:
        what = "is not tracked by DVC" if not cur["dvc_md5"] else \
            "has changes DVC has not recorded"
        raise EVError(f"{a.model} {what}; {verb} would lose those bytes", code=REFUSED,
                      hint=f"keep them with `dvc add {a.model}`, discard them with "
                           f"`dvc checkout --force {a.model}`, or pass --force (saves them "
                           "to the DVC cache first)")
    if not save:
        return {}
    md5, sha, size = store_object(repo, repo / a.model)
    return {"md5": md5, "sha256": sha, "size": size, "run_id": None, "version": None,
            "source": "unrecorded change (saved by --force)"}


def _new_entry(repo: Path, a: Alias, action: str, *, reason: str | None, seq: int) -> dict:
    dirty = [p for p in dirty_paths(repo) if not p.startswith(a.dir + "/")]
    return {"seq": seq, "id": uuid.uuid4().hex, "time": _now(), "action": action,
            "alias": a.name, "reason": reason, "git_commit": head_commit(repo),
            "git_dirty": bool(dirty)}


def _gto_entry(repo: Path, a: Alias, entry: dict, md5: str, s: _settings.Settings) -> None:
    if s.gto:
        from . import gto

        version, _ = gto.version_for(repo, s, md5, [read_ledger(repo, x)
                                                    for x in aliases(repo, s)])
        entry["gto"] = {"artifact": gto.artifact_name(s), "version": version,
                        "stage": a.name}


def _same_request(rec: dict | None, request: dict) -> dict | None:
    """The entry a recovered intent completed when it was this very command (the re-run of
    a killed command must not make the change twice)."""
    if rec and rec["recovered"] == "completed" and rec.get("request") == request:
        return rec["_entry"]
    return None


def _public(rec: dict | None) -> dict | None:
    return rec and {k: v for k, v in rec.items() if not k.startswith("_")}


def _write(repo: Path, a: Alias, entry: dict, md5: str, size: int, *, commit: bool,
           s: _settings.Settings, request: dict) -> None:
    old = repo / a.dvc
    intent = {"entry": entry, "md5": md5, "size": size, "commit": commit, "request": request,
              "old_dvc": old.read_text() if old.exists() else None}
    p = _intent_path(repo, a)
    write_text(p, json.dumps(intent, default=str))
    _apply(repo, a, intent, s)
    p.unlink()


def promote(repo: Path, a: Alias, *, src_file: Path, source: str, run, version: str | None,
            reason: str | None, force: bool, dry_run: bool, commit: bool) -> dict:
    s = _settings.load(repo)
    commit = commit or s.gto
    request = {"action": "promote", "source": source, "run_id": run and run.track_id,
               "reason": reason, "force": force}
    with production_lock(repo, a):
        rec = None if dry_run else recover(repo, a, s)
        done = _same_request(rec, request)
        if done:
            return {"action": "promote", "alias": a.name, "dry_run": False, "entry": done,
                    "unchanged": False, "recovered": _public(rec), "committed": commit}
        cur = alias_info(repo, a)
        entries = read_ledger(repo, a)
        entry = _new_entry(repo, a, "promote", reason=reason,
                           seq=(entries[-1]["seq"] + 1) if entries else 1)
        metrics = s.split(run.values)[1] if run is not None else {}
        entry.update({"run_id": run and run.track_id,
                      "version": (run and run.version) or version, "metrics": metrics,
                      **(_lineage(run.values) if run is not None else
                         {"trained_commit": None, "trained_dirty": None, "data_md5": None}),
                      "source": source})
        prev = None
        if cur:
            prev = {"md5": cur["dvc_md5"] or cur["disk_md5"], "sha256": cur.get("sha256"),
                    "run_id": cur["run_id"], "version": cur["version"],
                    "source": cur["source"] if cur["in_ledger"] else
                    ("changed outside model_manager.py" if entries else None)}
        res = {"action": "promote", "alias": a.name, "dry_run": dry_run, "entry": entry,
               "unchanged": False, "recovered": _public(rec)}
        saved = _guard_unrecorded(repo, a, cur, force, "promoting", save=not dry_run)
        if dry_run:
            md5, sha = hashes(src_file)
            entry.update(model={"path": a.model, "md5": md5, "sha256": sha,
                                "size": src_file.stat().st_size}, previous=prev)
            res["unchanged"] = bool(cur and cur["in_sync"] and cur["in_ledger"]
                                    and cur["md5"] == md5 and cur["run_id"] == entry["run_id"])
            return res
        md5, sha, size = store_object(repo, src_file)
        if saved:
            prev = {**(prev or {}), **saved, "run_id": (prev or {}).get("run_id"),
                    "version": (prev or {}).get("version")}
        entry.update(model={"path": a.model, "md5": md5, "sha256": sha, "size": size},
                     previous=prev)
        if cur and cur["in_sync"] and cur["in_ledger"] and cur["md5"] == md5 \
                and cur["run_id"] == entry["run_id"]:
            res["unchanged"] = True
            return res
        _gto_entry(repo, a, entry, md5, s)
        _write(repo, a, entry, md5, size, commit=commit, s=s, request=request)
        res["committed"] = commit
        return res


def _pick_target(repo: Path, a: Alias, entries: list[dict], stacks: list[list[dict]], *,
                 to: int | None, run_id: str | None, version: str | None, tag: str | None
                 ) -> tuple[dict, str, int | None]:
    """(target state, mode 'pop' or 'to', seq restored)."""
    stack = stacks[-1] if stacks else []
    by_seq = {e["seq"]: i for i, e in enumerate(entries)}
    if tag is not None:
        commit = resolve_commit(repo, tag)
        if commit is None:
            raise EVError(f"no tag or commit named {tag!r}", code=NOT_FOUND,
                          hint="list tags with `git tag -l -n1`")
        at = read_ledger(repo, a, commit)
        if not at:
            raise EVError(f"{a.ledger} has no entries at {tag}", code=NOT_FOUND,
                          hint="pick a tag made after a promote (model_manager.py history "
                               "--tags)")
        to = at[-1]["seq"]
    if run_id is not None or version is not None:
        hits = [e["seq"] for e in entries if (run_id is None or e.get("run_id") == run_id)
                and (version is None or e.get("version") == version)]
        if not hits:
            what = " ".join(x for x in (run_id and f"run {run_id}",
                                        version and f"version {version}") if x)
            raise EVError(f"{what} was never in {a.name} ({a.ledger})", code=NOT_FOUND,
                          hint="see `model_manager.py history`, or promote it")
        to = hits[-1]
    if to is not None:
        if to not in by_seq:
            raise EVError(f"no ledger entry {to} in {a.ledger} (1..{len(entries)})",
                          code=NOT_FOUND, hint="see the entries with `model_manager.py "
                                               "history`")
        target_stack = stacks[by_seq[to]]
        return target_stack[-1], "to", to
    if len(stack) < 2:
        raise EVError(f"no previous model in {a.ledger}", code=REFUSED,
                      hint="the first promotion cannot be rolled back; promote another "
                           "model, or pass --to N / --run-id ID")
    return stack[-2], "pop", stack[-2]["seq"]


def _get_bytes(repo: Path, a: Alias, md5: str) -> str:
    """Make sure object md5 is in the cache; return where it came from."""
    obj = cache_object(repo, md5)
    if obj.is_file():
        return "cache"
    from . import history

    revs = git(repo, "log", "--all", "--format=%H", "--", a.dvc).split()
    rev = next((r for r in revs if first_md5(show(repo, r, a.dvc)) == md5), None)
    if rev is None:
        raise EVError(f"model {md5} is neither in the DVC cache nor named by any commit's "
                      f"{a.dvc}", code=NOT_FOUND,
                      hint="run `dvc fetch` for the commit that had it, or restore the cache")
    tmp = ev_tmp(repo) / f"fetch-{md5}"
    history.fetch(repo, rev, a.model, tmp)  # the one "file at a revision" primitive
    got, _, _ = store_object(repo, tmp, move=True)
    if got != md5:
        raise EVError(f"the remote's copy of {md5} has md5 {got}",
                      hint="run `dvc push` from a machine with a good copy, then retry")
    return "remote"


def rollback(repo: Path, a: Alias, *, reason: str, to: int | None, run_id: str | None,
             version: str | None, tag: str | None, force: bool, dry_run: bool,
             commit: bool) -> dict:
    if not reason or not reason.strip():
        raise EVError("rollback needs --reason TEXT", code=USAGE,
                      hint="say why, e.g. --reason 'too many false positives'")
    s = _settings.load(repo)
    commit = commit or s.gto
    request = {"action": "rollback", "to": to, "run_id": run_id, "version": version,
               "tag": tag, "reason": reason.strip(), "force": force}
    with production_lock(repo, a):
        rec = None if dry_run else recover(repo, a, s)
        done = _same_request(rec, request)
        if done:
            return {"action": "rollback", "alias": a.name, "dry_run": False, "entry": done,
                    "recovered": _public(rec), "fetched_from": "cache", "committed": commit}
        cur = alias_info(repo, a)
        entries = read_ledger(repo, a)
        stacks = replay(entries)
        if cur is None or not entries:
            raise EVError(f"no model has been promoted to {a.name}", code=REFUSED,
                          hint="nothing to roll back; promote a model first")
        if not cur["in_ledger"] and not force:
            raise EVError(f"{a.model} (md5 {cur['md5']}) is not the ledger's {a.name} model "
                          f"({stacks[-1][-1]['md5'] if stacks[-1] else '-'})", code=REFUSED,
                          hint="it was changed outside model_manager.py; promote what you "
                               "want, or pass --force")
        target, mode, seq = _pick_target(repo, a, entries, stacks, to=to, run_id=run_id,
                                         version=version, tag=tag)
        if cur["in_sync"] and same_model(target, cur["md5"], cur["run_id"]):
            raise EVError(f"{a.name} already holds that model (md5 {cur['md5']}, ledger "
                          f"entry {seq})", code=REFUSED,
                          hint="nothing to restore; see `model_manager.py history`")
        saved = _guard_unrecorded(repo, a, cur, force, "rolling back", save=not dry_run)
        top = stacks[-1][-1] if stacks[-1] else {}
        entry = _new_entry(repo, a, "rollback", reason=reason.strip(),
                           seq=entries[-1]["seq"] + 1)
        src_entry = next((e for e in entries if e["seq"] == target["seq"]), {})
        entry.update({"mode": mode, "restores": seq, "run_id": target["run_id"],
                      "version": target["version"], "metrics": target["metrics"],
                      "trained_commit": src_entry.get("trained_commit"),
                      "trained_dirty": src_entry.get("trained_dirty"),
                      "data_md5": src_entry.get("data_md5"), "source": target["source"],
                      "model": {"path": a.model, "md5": target["md5"],
                                "sha256": target["sha256"], "size": target.get("size")},
                      "previous": saved or {"md5": top.get("md5"),
                                            "sha256": top.get("sha256"),
                                            "run_id": top.get("run_id"),
                                            "version": top.get("version"),
                                            "source": top.get("source")}})
        res = {"action": "rollback", "alias": a.name, "dry_run": dry_run, "entry": entry,
               "recovered": _public(rec)}
        if dry_run:
            return res
        res["fetched_from"] = _get_bytes(repo, a, target["md5"])
        obj = cache_object(repo, target["md5"])
        # The object is read once more to prove it is the model the ledger names (a cache
        # object rewritten through a hardlink would otherwise be restored silently).
        # sha256 alone when the ledger has it (half the CPU of md5 + sha256 here).
        if target["sha256"]:
            got_sha = sha256_file(obj)
            ok = got_sha == target["sha256"]
        else:
            got_md5, got_sha = hashes(obj)
            ok = got_md5 == target["md5"]
        if not ok:
            raise EVError(f"the DVC cache's copy of {target['md5']} is damaged (sha256 "
                          f"{got_sha[:12]}, the ledger says {target['sha256'] or '-'})",
                          hint=f"delete {obj} and re-run (the bytes then come from the "
                               "remote), or restore the cache")
        entry["model"]["sha256"] = got_sha
        entry["model"]["size"] = obj.stat().st_size
        _gto_entry(repo, a, entry, target["md5"], s)
        _write(repo, a, entry, target["md5"], obj.stat().st_size, commit=commit, s=s,
               request=request)
        res["committed"] = commit
        return res


def status(repo: Path, a: Alias, rev: str | None = None) -> dict | None:
    """alias_info, after finishing a change a killed promote/rollback left (never one that
    is still running: that one holds the lock, and status then says so)."""
    rec, busy = None, False
    if rev is None and _intent_path(repo, a).exists():
        try:
            with production_lock(repo, a, wait_s=0):
                rec = recover(repo, a)
        except EVError as exc:
            if exc.code != REFUSED:
                raise
            busy = True
    info = alias_info(repo, a, rev)
    if info is not None:
        if rec:
            info["recovered"] = _public(rec)
        if busy:
            info["in_progress"] = "a promote or rollback of this alias is running"
    return info


def protected(repo: Path) -> tuple[set[str], set[str], set[str]]:
    """Run ids, source paths and md5s any alias holds now (never pruned)."""
    runs, sources, md5s = set(), set(), set()
    for a in aliases(repo):
        p = repo / a.dvc
        md5 = first_md5(p.read_text()) if p.exists() else None
        if md5:
            md5s.add(md5)
        stacks = replay(read_ledger(repo, a))
        top = stacks[-1][-1] if stacks and stacks[-1] else None
        if top and top["md5"] == md5:
            if top["run_id"]:
                runs.add(top["run_id"])
            if top["source"]:
                sources.add(top["source"])
    return runs, sources, md5s
