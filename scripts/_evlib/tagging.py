"""tag_suggest.py's write side: the next tag, its bump and reasons, its message and lineage.

The read side (tags, outputs and runs as of a revision) is `history`; this module only
decides what a new tag should say and checks that it may be created.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .atomic import md5_file
from .errors import NOT_FOUND, USAGE, EVError
from .history import (
    _changed,
    all_tags,
    best_run,
    bump_version,
    data_outs,
    data_short,
    e_tags,
    find_out,
    fmt,
    metric_columns,
    next_exp_tag,
    outs_at,
    parse_e,
    repo_rel,
    run_metrics,
    run_params,
    summarize,
    version_runs,
)
from .proc import git, git_ok
from .runs import Run, db_versions, load_runs

# --- tag_suggest: the next tag and its message --------------------------------------------

def esc(v) -> str:
    """A value as it may appear in a tag subject: `|` and line breaks escaped, so a value
    can never forge a field or end the line the JSON lineage follows."""
    return (fmt(v).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r")
            .replace("\n", "\\n"))


def _short_param(col: str) -> str:
    return col[len("config_"):] if col.startswith("config_") else col


def hyperparams(params: dict) -> dict:
    """The params shown in the first line: config_ prefix dropped, model shown separately."""
    out: dict = {}
    for k, v in params.items():
        short = _short_param(k)
        if short == "model" or short in out:
            continue
        out[short] = v
    return out


def infer_bump(repo: Path, last: str, runs: list[Run], chosen: Run, db_rel: str, metric: str,
               mode: str, warn=None) -> tuple[str, list[str]]:
    """(level, reasons) for what changed between tag `last` and now."""
    reasons: dict[str, list[str]] = {"major": [], "minor": []}
    old_d, new_d = data_outs(outs_at(repo, last)), data_outs(outs_at(repo, None))
    for p in sorted(set(old_d) | set(new_d)):
        a, b = old_d.get(p), new_d.get(p)
        if (a and a.md5) != (b and b.md5):
            reasons["major"].append(f"data changed: {p} {a.short if a else 'none'} -> "
                                    f"{b.short if b else 'none'}")
    last_info = all_tags(repo).get(last)
    last_version = (last_info.lineage.get("version") if last_info else None) or last
    prev = version_runs(repo, db_rel, last_version, last, warn)
    old_m = sorted({r.model for r in prev if r.model})
    new_m = sorted({r.model for r in runs if r.model})
    if prev and old_m != new_m:
        reasons["major"].append(f"model changed: {','.join(old_m) or 'none'} -> "
                                f"{','.join(new_m) or 'none'}")
    old_yaml = git(repo, "show", f"{last}:params.yaml") if git_ok(
        repo, "cat-file", "-e", f"{last}:params.yaml") else None
    cur_yaml = (repo / "params.yaml").read_text() if (repo / "params.yaml").is_file() else None
    if old_yaml is not None or cur_yaml is not None:
        if (old_yaml or "").strip() != (cur_yaml or "").strip():
            reasons["minor"].append(f"params.yaml changed since {last}")
    if prev:
        cols = metric_columns(prev + runs, metric)
        try:
            pb = best_run(prev, metric, mode, last)
        except EVError:
            pb = None
        if pb is not None:
            old_p = {k: v for k, v in run_params(pb, cols).items() if _short_param(k) != "model"}
            new_p = {k: v for k, v in run_params(chosen, cols).items() if _short_param(k) != "model"}
            diff = _changed(old_p, new_p)
            if diff:
                reasons["minor"].append("params changed: " + ", ".join(
                    f"{_short_param(k)} {fmt(old_p.get(k))} -> {fmt(new_p.get(k))}"
                    for k in diff))
    for level in ("major", "minor"):
        if reasons[level]:
            return level, reasons[level] + (reasons["minor"] if level == "major" else [])
    return "patch", [f"same data, model and params as {last}: a re-run or a fix"]


def tagged_versions(tags: dict) -> set[str]:
    """Versions some tag stands for: its own name, the version its lineage names (tags made
    with --tag, exp tags), and exp-NAME for exp-NAME-vN."""
    out = set(tags)
    for name, info in tags.items():
        out.add(info.lineage.get("version") or name)
        m = re.fullmatch(r"(exp-.+)-v\d+", name)
        if m:
            out.add(m.group(1))
    return out


def pick_version(repo: Path, db: Path, tags: dict) -> str:
    """The one version in the results DB that has rows but no tag yet."""
    if not db.is_file():
        raise EVError(f"results DB {db} does not exist", code=NOT_FOUND,
                      hint="run training first (it logs rows under --version), or pass --db")
    untagged = [v for v in db_versions(db) if v not in tagged_versions(tags)]
    if len(untagged) == 1:
        return untagged[0]
    if not untagged:
        raise EVError(f"every version in {db.name} is already tagged", code=NOT_FOUND,
                      hint="run training with a new --version (see the suggested name with "
                           "--version omitted after logging), or pass --version")
    raise EVError(f"several untagged versions in {db.name}: {', '.join(untagged)}", code=USAGE,
                  hint="pass --version to choose one")


def default_description(level: str, reasons: list[str], kind: str, name: str | None) -> str:
    if kind == "exp":
        return f"worktree experiment {name}"
    if level == "initial":
        return "baseline"
    if level == "patch":
        return "re-run"
    return reasons[0].split(":")[0] if reasons else level


def suggest(repo: Path, *, version: str | None, kind: str, name: str | None, db: Path,
            tag_name: str | None = None,
            metric: str | None, mode: str, bump: str | None, description: str | None,
            warn, show_params: list[str] | None = None) -> dict:
    from .repo import head_commit, is_dirty

    tags = all_tags(repo)
    etags = e_tags(tags, warn)
    last = etags[-1] if etags else None
    db_rel = repo_rel(repo, str(db))
    if kind == "exp":
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise EVError("--kind exp needs --name NAME (letters, digits, . _ -)", code=USAGE,
                          hint="e.g. --kind exp --name transformer gives exp-transformer-v1")
        version = version or f"exp-{name}"
    elif version is None:
        try:
            version = pick_version(repo, db, tags)
        except EVError as exc:
            prod = production_suggest(repo, last, tags, tag_name=tag_name, bump=bump,
                                      description=description)
            if prod is None:
                raise
            if exc.code != NOT_FOUND:  # untagged runs too: say how to tag the production change
                rv = prod["lineage"].get("run_version")
                if not rv:
                    raise
                how = f"--version {rv} --tag {prod['name']}" if rv in tags else f"--version {rv}"
                raise EVError(exc.message, code=exc.code,
                              hint=f"pass --version to choose one; to tag the production "
                                   f"change ({prod['lineage']['action']} since {last}): {how}"
                              ) from None
            return prod
    elif version in tags and tag_name and tag_name != version:
        # rows of an already tagged version under a new tag: a production change, if the
        # ledger has one since the last tag (the runs are the same)
        prod = production_suggest(repo, last, tags, tag_name=tag_name, bump=bump,
                                  description=description)
        if prod is not None:
            return prod
    runs = load_runs(db, version) if db.is_file() else []
    if not runs:
        raise EVError(f"no rows for version {version} in {db_rel}", code=NOT_FOUND,
                      hint=f"run training with --version {version} first, or pass --db/--version")
    s = summarize(runs, version, metric, mode)
    chosen = best_run(runs, s.metric, mode, version)
    if kind == "exp":
        level, reasons = "exp", [f"next in the exp-{name} sequence"]
        tag = next_exp_tag(tags, name)
        expected = tag
    else:
        if last is None:
            level, reasons = "initial", ["first experiment tag"]
        else:
            level, reasons = infer_bump(repo, last, runs, chosen, db_rel, s.metric, mode,
                                        warn)
        if bump:
            reasons = [f"--bump {bump} (inferred: {level}: {reasons[0]})"]
            level = bump
        expected = bump_version(last, "patch" if level == "initial" else level) \
            if last else "e0.1.0"
        tag = tag_name or version  # --tag: e.g. main's tag after merging a worktree's runs
        if not parse_e(tag):
            raise EVError(f"{'--tag' if tag_name else 'version'} {tag!r} is not an experiment "
                          f"tag name (e<major>.<minor>.<patch>)", code=USAGE,
                          hint=f"log the runs under --version {expected}, pass --tag "
                               f"{expected}, or use --kind exp --name NAME")
        if tag != expected and tag not in tags:
            if tag_name:
                warn(f"tagging {tag} (--tag; the rows are logged under {version}) although "
                     f"the change since {last or 'nothing'} is a {level} bump ({expected})")
            else:
                warn(f"rows are logged under {tag} but the change since {last or 'nothing'} "
                     f"is a {level} bump ({expected}); tagging {tag} so the tag matches its "
                     "rows")
    now_outs = outs_at(repo, None)
    params = run_params(chosen, s.metric_cols)
    metrics = run_metrics(chosen, s.metric_cols)
    value = chosen.values.get(s.metric)
    # no `model` param logged: the field is left out (a made-up value would look recorded)
    parts = [f"model={esc(chosen.model)}"] if chosen.model else []
    hp = hyperparams(params)
    if show_params is not None:  # --params: only these, in this order
        missing = [k for k in show_params if k not in hp]
        if missing:
            raise EVError(f"--params {','.join(missing)}: not a param of run "
                          f"{chosen.track_id}", code=USAGE,
                          hint=f"choose from: {', '.join(hp) or '(none)'}")
        hp = {k: hp[k] for k in show_params}
    parts += [f"{esc(k)}={esc(v)}" for k, v in hp.items()]
    parts.append(f"{esc(s.metric)}={esc(value)}")
    if len(runs) > 1:
        parts.append(f"best of {len(runs)} runs")
    run_data = run_data_md5(chosen)
    data = run_data if run_data is not None else {
        p: o.md5 for p, o in sorted(data_outs(now_outs).items())}
    parts.append(f"data={data_label(data) if run_data is not None else data_short(now_outs)}")
    desc = " ".join((description or default_description(level, reasons, kind, name)).split())
    parts.append(desc.replace("|", "/"))
    changed = dvc_changed(repo)
    lineage = {
        "version": version, "tag": tag, "commit": head_commit(repo),
        "dirty": is_dirty(repo) or bool(changed), "dvc_changed": changed,
        "data": data, "data_from": "run lineage" if run_data is not None else "dvc files",
        "run": chosen.track_id, "runs": len(runs), "metric": s.metric, "mode": mode,
        "params": params, "metrics": metrics,
        "run_lineage": {k: v for k, v in chosen.values.items()
                        if k in ("git_commit", "git_dirty", "data_hash", "model_path")},
    }
    message = " | ".join(parts) + "\n\n" + json.dumps(lineage, sort_keys=True,
                                                       default=str) + "\n"
    return {"name": tag, "expected": expected, "last": last, "version": version,
            "bump": level, "reason": "; ".join(reasons), "reasons": reasons,
            "message": message, "lineage": lineage, "exists": tag in tags,
            "_chosen": chosen}


def production_suggest(repo: Path, last: str | None, tags: dict, *, tag_name: str | None,
                       bump: str | None, description: str | None) -> dict | None:
    """The tag for a production change with no new runs (a promote or rollback since the
    last tag), or None when the production ledger has no entry the last tag lacks.

    Bump rule: patch (the same runs, another model serving); --bump overrides.
    """
    from . import registry
    from .repo import head_commit, is_dirty

    a = registry.alias(repo)
    now = registry.read_ledger(repo, a)
    then = registry.read_ledger(repo, a, last) if last else []
    if not now:
        return None
    e = now[-1]
    level = bump or "patch"
    what = e["action"] + (f" to ledger entry {e['restores']}" if e["action"] == "rollback"
                          else "")
    reasons = [f"production change since {last or 'nothing'}: {what}, no new runs"]
    expected = bump_version(last, level) if last else "e0.1.0"
    if len(now) <= len(then):
        info = tags.get(last)
        if not (info and info.lineage.get("kind") == "production"
                and info.lineage.get("ledger_seq") == e["seq"]):
            return None
        expected = last  # this change is tagged already (the re-run of a create)
    tag = tag_name or expected
    if not parse_e(tag):
        raise EVError(f"--tag {tag!r} is not an experiment tag name (e<major>.<minor>."
                      "<patch>)", code=USAGE, hint=f"pass --tag {expected}")
    data = e.get("data_md5") or {}
    who = f"{e.get('run_id') or e.get('source')} ({e.get('version') or '-'})"
    desc = " ".join((description or e.get("reason") or what).split()).replace("|", "/")
    parts = [f"production={esc(who)}", esc(what), f"model={e['model']['md5'][:8]}",
             f"data={data_label(data) if data else 'unknown'}", desc]
    changed = dvc_changed(repo)
    lineage = {"kind": "production", "tag": tag, "version": tag, "commit": head_commit(repo),
               "dirty": is_dirty(repo) or bool(changed), "dvc_changed": changed,
               "alias": a.name, "ledger_seq": e["seq"], "action": e["action"],
               "restores": e.get("restores"), "run": e.get("run_id"),
               "run_version": e.get("version"), "reason": e.get("reason"),
               "model_md5": e["model"]["md5"], "trained_commit": e.get("trained_commit"),
               "data": data, "metrics": e.get("metrics") or {}}
    message = " | ".join(parts) + "\n\n" + json.dumps(lineage, sort_keys=True,
                                                       default=str) + "\n"
    return {"name": tag, "expected": expected, "last": last, "version": tag,
            "bump": level, "reason": "; ".join(reasons), "reasons": reasons,
            "message": message, "lineage": lineage, "exists": tag in tags,
            "production_change": True, "_chosen": None}


def run_data_md5(r: Run) -> dict | None:
    """{path: md5} of the data the run read (the run helper's ev_data_md5), if logged."""
    v = r.values.get("ev_data_md5")
    if v is None:
        return None
    try:
        d = json.loads(v) if isinstance(v, str) else v
    except ValueError:
        return None
    return dict(sorted(d.items())) if isinstance(d, dict) else None


def data_label(data: dict) -> str:
    """The same 6-character name data_short gives, from {path: md5}."""
    import hashlib

    if not data:
        return "none"
    if len(data) == 1:
        return next(iter(data.values())).replace(".dir", "")[:6]
    joined = "\n".join(f"{p} {m}" for p, m in sorted(data.items()))
    return hashlib.md5(joined.encode()).hexdigest()[:6]  # noqa: S324 - a name


def dvc_changed(repo: Path) -> list[str]:
    """DVC outputs whose workspace bytes differ from what their .dvc/dvc.lock records
    (`dvc status`): data changed without `dvc add` is not what the tag would name."""
    from .proc import dvc_run

    if not (repo / ".dvc").is_dir():
        return []
    cp = dvc_run(repo, "status", "--json")
    if cp.returncode != 0:
        return [f"(dvc status failed: {(cp.stderr or cp.stdout).strip().splitlines()[-1:]})"]
    try:
        doc = json.loads(cp.stdout or "{}")
    except ValueError:
        return []
    out = []
    for stage, items in doc.items():
        for item in items if isinstance(items, list) else []:
            for kind in ("changed outs", "changed deps"):
                for path, state in (item.get(kind) or {}).items() if isinstance(item, dict) \
                        else []:
                    out.append(f"{path} ({state})")
        if not isinstance(items, list):
            out.append(stage)
    return sorted(set(out))


def create_checks(repo: Path, db: Path, chosen: Run) -> list[str]:
    """Why tagging now would record something uncommitted (empty list: safe)."""
    from .repo import dirty_paths

    problems = []
    dirty = dirty_paths(repo)
    if chosen is None:  # a production change: only the tree must be committed
        if dirty:
            problems.append(f"uncommitted changes: {', '.join(dirty[:3])}")
        return problems
    if dirty:
        shown = ", ".join(dirty[:3]) + (f" and {len(dirty) - 3} more" if len(dirty) > 3 else "")
        problems.append(f"uncommitted changes: {shown}")
    head = outs_at(repo, "HEAD") if git_ok(repo, "rev-parse", "--verify", "-q", "HEAD") else {}
    db_rel = repo_rel(repo, str(db))
    hit = find_out(head, db_rel)
    if hit is None or hit[1]:
        if not git_ok(repo, "ls-files", "--error-unmatch", db_rel):
            problems.append(f"{db_rel} is not tracked at HEAD (dvc add {db_rel} && git commit)")
    elif db.is_file() and md5_file(db) != hit[0].md5:
        problems.append(f"{db_rel} changed since it was committed "
                        f"(dvc add {db_rel} && git commit)")
    mp = chosen.values.get("model_path")
    if mp:
        mrel = repo_rel(repo, str(mp))
        mhit = find_out(head, mrel)
        if mhit is None:
            problems.append(f"model {mrel} is not DVC-tracked at HEAD "
                            f"(dvc add {os.path.dirname(mrel) or mrel} && git commit)")
        elif not mhit[1] and (repo / mrel).is_file() and md5_file(repo / mrel) != mhit[0].md5:
            problems.append(f"model {mrel} changed since it was committed")
    return problems
