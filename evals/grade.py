#!/usr/bin/env python3
"""Grade what an agent left behind for one eval task (see evals/evals.json).

    python evals/grade.py TASK PROJECT [--json]

PROJECT is the project made by `make_project.py TASK DIR` (DIR/project). Every expectation of
the task is checked mechanically against the end state (results DB rows per run, production
bytes against the candidates, the ledger, tags and their messages, the DVC remote and cache,
the working tree) and printed as PASS/FAIL with its evidence. With --json: one object
{"status": "pass"|"fail", "task", "expectations": [{"id", "text", "passed", "evidence"}],
"summary": {"passed", "failed", "total", "pass_rate"}}, the grading.json shape of the Agent
Skills eval guide plus `status`.

The grader never imports the skill's code: it reads git, SQLite, the .dvc files and the
cache and remote directories itself, so a bug in the skill cannot make it pass.

exit codes: 0 every expectation passed; 1 at least one failed; 2 usage (unknown task, not a
project made by make_project.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

START = "evals-start.json"
DB = "results/experiments.db"
PROD = "models/production/model.bin"
LEDGER = "models/production/ledger.jsonl"
CANDIDATES = "models/candidates"
METRIC = "f1_score"
MD5_RE = re.compile(r"[0-9a-f]{32}(\.dir)?")


class Usage(Exception):
    pass


# --- reading the project -----------------------------------------------------------------

def md5_file(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - DVC names its objects by md5
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def parse_dvc(text: str) -> list[dict]:
    import yaml

    try:
        outs = (yaml.safe_load(text) or {}).get("outs") or []
    except (yaml.YAMLError, AttributeError):
        return []
    # only well-formed hashes: an md5 becomes a path under the cache or the remote
    return [o for o in outs if isinstance(o, dict) and MD5_RE.fullmatch(str(o.get("md5")))]


def read_db(path: Path, immutable: bool = False) -> dict[str, dict]:
    """{track_id: {"rows": n, column: last non-null value}} of a xetrack DB (read-only; a
    live DB's -wal or journal is part of it, so only a private copy is read immutable)."""
    if not path.is_file():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro{'&immutable=1' if immutable else ''}",
                          uri=True)
    try:
        cur = con.execute('SELECT * FROM "default" ORDER BY timestamp')
        cols = [d[0] for d in cur.description]
        runs: dict[str, dict] = {}
        for row in cur:
            rec = dict(zip(cols, row, strict=True))
            run = runs.setdefault(str(rec["track_id"]), {"rows": 0})
            run["rows"] += 1
            for k, v in rec.items():
                if v is not None:
                    run[k] = v
        return runs
    except sqlite3.Error:
        return {}
    finally:
        con.close()


def num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def numbers_in(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE]-?\d+)?", text)]


def mentions_value(text: str, value: float, tol: float = 6e-4) -> bool:
    return any(abs(n - value) <= tol for n in numbers_in(text))


def mentions_param(text: str, name: str, value: float, rest_of_line: bool = False) -> bool:
    """`name=value` (or `name: value`); with rest_of_line, any number after the name on its
    line counts (`lr: 0.05 -> 0.5`)."""
    for m in re.finditer(rf"{re.escape(name)}\W{{0,3}}(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)", text,
                         re.I):
        if abs(float(m.group(1)) - value) < 1e-9:
            return True
        if rest_of_line:
            line = text[m.start(1):].split("\n", 1)[0]
            if any(abs(n - value) < 1e-9 for n in numbers_in(line)):
                return True
    return False


class Project:
    def __init__(self, path: Path):
        self.path = path.resolve()
        if not (self.path / ".git").is_dir():
            raise Usage(f"{self.path} is not a project made by make_project.py (no .git dir)")
        start = self.path / ".git" / START
        if not start.is_file():
            raise Usage(f"{start} is missing: grade a project made by make_project.py")
        self.start = json.loads(start.read_text())
        self._md5: dict[tuple, str] = {}
        self._db_at: dict[str, dict] = {}

    # git
    def git(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        cp = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True,
                            env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"})
        if check and cp.returncode:
            raise RuntimeError(f"git {' '.join(args)}: {cp.stderr.strip()}")
        return cp

    def out(self, *args: str) -> str:
        return self.git(*args).stdout.strip()

    def show(self, rev: str, rel: str) -> str | None:
        cp = self.git("show", f"{rev}:{rel}")
        return cp.stdout if cp.returncode == 0 else None

    def tags(self) -> dict[str, dict]:
        """{name: {"annotated": bool, "commit": sha, "message": text}}."""
        fmt = "%(refname:short)%00%(objecttype)%00%(*objectname)%00%(objectname)"
        tags = {}
        for line in self.out("for-each-ref", "refs/tags", f"--format={fmt}").splitlines():
            name, kind, peeled, obj = line.split("\0")
            tags[name] = {"annotated": kind == "tag", "commit": peeled or obj,
                          "message": self.out("tag", "-l", "--format=%(contents)", name)}
        return tags

    def new_tags(self) -> dict[str, dict]:
        return {k: v for k, v in self.tags().items() if k not in self.start["tags"]}

    def is_ancestor(self, commit: str, of: str = "HEAD") -> bool:
        return self.git("merge-base", "--is-ancestor", commit, of).returncode == 0

    # dvc
    def cache_dir(self) -> Path:
        return self.path / ".dvc" / "cache" / "files" / "md5"

    def remote_dir(self) -> Path:
        return Path(self.start["remote"]) / "files" / "md5"

    def obj(self, root: Path, md5: str) -> Path:
        return root / md5[:2] / md5[2:]

    def md5_of(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in self._md5:
            self._md5[key] = md5_file(path)
        return self._md5[key]

    def dvc_outs(self, rev: str) -> list[tuple[str, dict]]:
        """(.dvc path, out) for every .dvc file committed at rev."""
        outs = []
        for rel in self.out("ls-tree", "-r", "--name-only", rev).splitlines():
            if rel.endswith(".dvc") and not rel.startswith(".dvc/"):
                for o in parse_dvc(self.show(rev, rel) or ""):
                    outs.append((rel, o))
        return outs

    def out_md5(self, rev: str, rel: str) -> str | None:
        for o in parse_dvc(self.show(rev, rel + ".dvc") or ""):
            return o["md5"]
        return None

    def db_at(self, rev: str) -> dict[str, dict]:
        """Runs of the results DB committed (DVC-tracked) at rev, read from the cache."""
        if rev not in self._db_at:
            md5 = self.out_md5(rev, DB)
            path = self.obj(self.cache_dir(), md5) if md5 else None
            runs: dict = {}
            if path and path.is_file():
                with tempfile.TemporaryDirectory() as tmp:
                    copy = Path(tmp) / "db.sqlite"
                    copy.write_bytes(path.read_bytes())
                    runs = read_db(copy, immutable=True)
            self._db_at[rev] = runs
        return self._db_at[rev]

    # state
    def runs(self) -> dict[str, dict]:
        return read_db(self.path / DB)

    def ledger(self) -> list[dict]:
        p = self.path / LEDGER
        if not p.is_file():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unparsable": line})
        return out

    def prod_sha(self) -> str | None:
        p = self.path / PROD
        return sha256_file(p) if p.is_file() else None

    def candidate(self, run: str, version: str) -> Path | None:
        d = self.path / CANDIDATES
        hits = sorted(d.glob(f"{glob_escape(version)}--{glob_escape(run)}.*")) if d.is_dir() \
            else []
        return hits[0] if hits else None


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def best_run(runs: dict[str, dict], among: Callable[[dict], bool] = lambda r: True):
    scored = [(num(r.get(METRIC)), tid) for tid, r in runs.items() if among(r)
              and num(r.get(METRIC)) is not None]
    if not scored:
        return None, None
    top = max(s for s, _ in scored)
    return [t for s, t in scored if s == top], top


# --- checks ------------------------------------------------------------------------------
# A check is (id, text, fn); fn(Project) -> (passed, evidence).

Check = tuple[str, str, Callable[[Project], tuple[bool, str]]]


def version_runs(version: str, param: str, values: list[float]) -> Check:
    def fn(p: Project):
        runs = {t: r for t, r in p.runs().items() if r.get("version") == version}
        if not runs:
            return False, f"no run of version {version} in {DB}"
        got = sorted((num(r.get(param)), t, r["rows"], r.get(METRIC)) for t, r in runs.items())
        seen = [g[0] for g in got]
        ok = (sorted(seen, key=lambda x: (x is None, x)) == sorted(values)
              and all(g[3] is not None for g in got))
        detail = ", ".join(f"{t}: {param}={v} rows={n} {METRIC}={m}" for v, t, n, m in got)
        return ok, f"{len(runs)} runs of {version} (want one per {param} in {values}): {detail}"
    vals = ", ".join(map(str, values))
    return ("runs", f"The results DB has exactly one run of version {version} for each {param} "
                    f"in [{vals}], each with its {METRIC}", fn)


def start_runs_kept() -> Check:
    def fn(p: Project):
        runs = p.runs()
        bad = [f"{t}: {n} rows at start, {runs.get(t, {}).get('rows', 0)} now"
               for t, n in p.start["run_rows"].items() if runs.get(t, {}).get("rows", 0) != n]
        return not bad, ("; ".join(bad) if bad else
                         f"all {len(p.start['run_rows'])} earlier runs have their rows")
    return ("earlier-runs-kept", "Every run recorded before the task still has all its rows "
                                 "in the results DB", fn)


def _prod_matches(p: Project, runs: dict, tids: list[str]) -> tuple[bool, str]:
    sha = p.prod_sha()
    if sha is None:
        return False, f"{PROD} does not exist"
    evid = []
    for t in tids:
        c = p.candidate(t, str(runs[t].get("version")))
        if c is None:
            evid.append(f"no candidate {CANDIDATES}/{runs[t].get('version')}--{t}.*")
            continue
        if sha256_file(c) == sha:
            return True, f"{PROD} sha256 {sha[:12]} = {c.relative_to(p.path)}"
        evid.append(f"{c.relative_to(p.path)} sha256 {sha256_file(c)[:12]}")
    return False, f"{PROD} sha256 {sha[:12]} matches none of: " + "; ".join(evid)


def production_is_best(where: str = "", version: str | None = None) -> Check:
    """Production is the best run's candidate (and, given `version`, that run is of it)."""
    def fn(p: Project):
        runs = p.runs()
        tids, top = best_run(runs)
        if not tids:
            return False, f"no run with {METRIC} in {DB}"
        ok, ev = _prod_matches(p, runs, tids)
        if version and not any(runs[t].get("version") == version for t in tids):
            ok, ev = False, f"the best run is not of {version}; " + ev
        return ok, f"best {METRIC}={top} ({', '.join(tids)}); {ev}"
    return ("production-best", "Production (models/production/model.bin) is byte for byte the "
                               f"candidate model of the run with the best {METRIC}{where}", fn)


def production_is(version_of: Callable[[Project], str | None], text: str) -> Check:
    def fn(p: Project):
        want = version_of(p)
        sha = p.prod_sha()
        return (sha is not None and sha == want,
                f"{PROD} sha256 {str(sha)[:12]}, expected {str(want)[:12]}")
    return ("production", text, fn)


def start_prod(p: Project) -> str | None:
    return p.start["files"].get(PROD)


def first_promoted(p: Project) -> str | None:
    return json.loads(p.start["ledger"][0])["model"]["sha256"] if p.start["ledger"] else None


def ledger_appended(n: int, action: str | None = None,
                    run_of: Callable[[Project], list[str]] | None = None) -> Check:
    def fn(p: Project):
        now = p.ledger()
        start = [json.loads(x) for x in p.start["ledger"]]
        if now[:len(start)] != start:
            return False, f"the {len(start)} earlier ledger entries were changed or removed"
        new = now[len(start):]
        if len(new) != n:
            return False, f"{len(new)} new ledger entries, want {n}"
        if n == 0:
            return True, f"ledger unchanged ({len(start)} entries)"
        last = new[-1]
        sha, prod = (last.get("model") or {}).get("sha256"), p.prod_sha()
        problems = []
        if sha != prod:
            problems.append(f"its sha256 {str(sha)[:12]} is not production's {str(prod)[:12]}")
        if action and last.get("action") not in action.split("|"):
            problems.append(f"action {last.get('action')!r}, want {action}")
        if run_of is not None:
            want = run_of(p)
            if last.get("run_id") not in want:
                problems.append(f"run {last.get('run_id')}, want one of {want}")
        return not problems, (f"new entry: {last.get('action')} {last.get('run_id')} "
                              f"{last.get('version')} sha256 {str(sha)[:12]}; "
                              + ("; ".join(problems) or "matches production"))
    what = {0: "The production ledger is unchanged (nothing was promoted)",
            1: "The production ledger kept its earlier entries and gained exactly one, for the "
               "model now in production"}
    return ("ledger", what.get(n, f"The ledger gained exactly {n} entries"), fn)


def best_ids(p: Project) -> list[str]:
    return best_run(p.runs())[0] or []


def tag_check(name: str, param: str | None = None, of_version: bool = False) -> Check:
    """Annotated tag `name` whose message gives the chosen run's metric (and param) and whose
    commit records that run in the DVC-tracked results DB."""
    def fn(p: Project):
        t = p.tags().get(name)
        if t is None:
            return False, f"no tag {name}"
        if not t["annotated"]:
            return False, f"{name} is a lightweight tag (no message)"
        runs = p.db_at(t["commit"])
        mine = {k: r for k, r in runs.items() if r.get("version") == name} if of_version \
            else runs
        tids, top = best_run(mine)
        if not tids:
            return False, f"the results DB committed at {name} has no run " + \
                (f"of version {name}" if of_version else f"with {METRIC}")
        first = t["message"].strip().splitlines()[0] if t["message"].strip() else ""
        problems = []
        if not mentions_value(t["message"], top):
            problems.append(f"message does not give {METRIC}={top}")
        if param:
            vals = {num(mine[x].get(param)) for x in tids}
            if not any(v is not None and mentions_param(t["message"], param, v) for v in vals):
                problems.append(f"message does not give {param}={sorted(vals)}")
        return not problems, f"{name}: {first!r}; " + ("; ".join(problems) or
                                                        f"best run {tids[0]} recorded")
    return (f"tag-{name}", f"Annotated tag {name} exists, its commit holds the results DB with "
                           f"the run, and its message gives the run's {METRIC}"
                           + (f" and {param}" if param else ""), fn)


def tag_production_is_best(name: str) -> Check:
    def fn(p: Project):
        t = p.tags().get(name)
        if t is None:
            return False, f"no tag {name}"
        md5 = p.out_md5(t["commit"], PROD)
        sha = p.prod_sha()
        cur = md5_file(p.path / PROD) if (p.path / PROD).is_file() else None
        return (md5 is not None and md5 == cur and sha is not None,
                f"{PROD}.dvc at {name}: md5 {md5}; production now md5 {cur}")
    return (f"tag-{name}-production", f"The commit of {name} records the production model now "
                                      "in models/production/model.bin", fn)


def remote_complete() -> Check:
    def fn(p: Project):
        remote = p.remote_dir()
        revs = ["HEAD", *p.tags()]
        missing, bad, n = [], [], 0
        seen: set[str] = set()
        for rev in revs:
            for rel, o in p.dvc_outs(rev):
                todo = [o["md5"]]
                while todo:
                    md5 = todo.pop()
                    if md5 in seen:
                        continue
                    seen.add(md5)
                    f = p.obj(remote, md5)
                    if not f.is_file():
                        missing.append(f"{rev}:{rel} {md5}")
                        continue
                    n += 1
                    if p.md5_of(f) != md5.removesuffix(".dir"):
                        bad.append(f"{md5} re-hashes to {p.md5_of(f)}")
                        continue
                    if md5.endswith(".dir"):
                        try:
                            todo += [e["md5"] for e in json.loads(f.read_text())
                                     if MD5_RE.fullmatch(str(e.get("md5")))]
                        except (ValueError, KeyError, TypeError):
                            bad.append(f"{md5}: not a directory listing")
        if not (p.remote_dir().parent.parent).is_dir():
            return False, f"remote {p.start['remote']} does not exist"
        ok = not missing and not bad
        return ok, (f"{n} objects of HEAD and {len(revs) - 1} tags on the remote, all re-hash"
                    if ok else "; ".join((missing + bad)[:6]) +
                    f" ({len(missing)} missing, {len(bad)} corrupt)")
    return ("remote", "dvc status -c is clean for HEAD and every tag: each DVC object they "
                      "reference is on the remote and re-hashes to its name", fn)


def cache_intact() -> Check:
    def fn(p: Project):
        root = p.cache_dir()
        bad, n = [], 0
        if root.is_dir():
            for d in sorted(root.iterdir()):
                for f in sorted(d.iterdir()) if d.is_dir() else []:
                    if f.name.startswith(".") or not f.is_file():
                        continue
                    n += 1
                    name = d.name + f.name.removesuffix(".dir")
                    got = p.md5_of(f)
                    if got != name:
                        bad.append(f"{d.name}/{f.name} re-hashes to {got}")
        return not bad, (f"{n} cache objects re-hash to their names" if not bad
                         else "; ".join(bad[:5]))
    return ("cache", "Every object in the DVC cache re-hashes to its name (nothing wrote into "
                     "the cache)", fn)


def workspace_matches() -> Check:
    def fn(p: Project):
        bad, n = [], 0
        for rel, o in p.dvc_outs("HEAD"):
            target = (p.path / Path(rel).parent / str(o.get("path", ""))).resolve()
            if not target.is_relative_to(p.path):
                bad.append(f"{rel} names a path outside the project: {o.get('path')!r}")
                continue
            n += 1
            md5 = o["md5"]
            if md5.endswith(".dir"):
                listing = p.obj(p.cache_dir(), md5)
                if not target.is_dir() or not listing.is_file():
                    bad.append(f"{target.relative_to(p.path)} missing")
                    continue
                want = {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())
                        if MD5_RE.fullmatch(str(e.get("md5")))}
                have = {str(f.relative_to(target)): p.md5_of(f) for f in target.rglob("*")
                        if f.is_file()}
                if want != have:
                    diff = sorted(set(want.items()) ^ set(have.items()))[:3]
                    bad.append(f"{target.relative_to(p.path)} differs from its .dvc: {diff}")
            elif not target.is_file() or p.md5_of(target) != md5:
                bad.append(f"{target.relative_to(p.path)} differs from {rel}")
        return not bad, (f"{n} DVC outputs match their .dvc files" if not bad
                         else "; ".join(bad[:4]))
    return ("dvc-status", "dvc status is clean: every DVC-tracked file and directory at HEAD "
                          "matches its committed .dvc hash", fn)


def tree_clean(allow: tuple[str, ...] = ()) -> Check:
    def fn(p: Project):
        lines = [x for x in p.out("status", "--porcelain").splitlines()
                 if x[3:].strip('"') not in allow]
        return not lines, ("git status is clean" if not lines else
                           "uncommitted: " + "; ".join(lines[:6]))
    extra = f" (except {', '.join(allow)})" if allow else ""
    return ("clean", f"Everything is committed: git status is clean{extra}", fn)


def file_unchanged(rel: str, at_tags: bool = False) -> Check:
    def fn(p: Project):
        want = p.start["files"].get(rel)
        f = p.path / rel
        now = sha256_file(f) if f.is_file() else None
        problems = [] if now == want else [f"{rel} sha256 {str(now)[:12]} != start {want[:12]}"]
        if at_tags:
            for name, t in p.new_tags().items():
                blob = subprocess.run(["git", "show", f"{t['commit']}:{rel}"], cwd=p.path,
                                      capture_output=True).stdout
                if hashlib.sha256(blob).hexdigest() != want:
                    problems.append(f"{rel} at {name} differs from the user's")
        return not problems, "; ".join(problems) or f"{rel} byte-identical to the start"
    return (f"unchanged-{rel}", f"{rel} is byte-identical to the user's original"
                                + (" (in the working tree and at every new tag)" if at_tags
                                   else ""), fn)


def worktree_gone(name: str) -> Check:
    def fn(p: Project):
        wts = [x[9:] for x in p.out("worktree", "list", "--porcelain").splitlines()
               if x.startswith("worktree ")]
        here = [w for w in wts if Path(w).name == f"exp-{name}"]
        folder = Path(p.start["workspace"]) / f"exp-{name}"
        ok = not here and not folder.exists()
        return ok, (f"worktrees: {wts}" + (f"; {folder} still exists" if folder.exists()
                                           else ""))
    return (f"teardown-{name}", f"The experiment worktree exp-{name} was torn down once its "
                                "work was safe", fn)


def exp_run_merged(version: str, param: str, value) -> Check:
    def fn(p: Project):
        runs = {t: r for t, r in p.runs().items() if r.get("version") == version}
        good = [t for t, r in runs.items() if r.get(param) == value or
                (num(value) is not None and num(r.get(param)) == num(value))]
        return len(runs) == 1 and len(good) == 1, (
            f"{len(runs)} run(s) of version {version} in main's {DB}: "
            + ", ".join(f"{t} {param}={r.get(param)} {METRIC}={r.get(METRIC)}"
                        for t, r in runs.items()))
    return ("exp-merged", f"Main's results DB holds the experiment's run (version {version}, "
                          f"{param}={value}) exactly once", fn)


def exp_tag(name: str) -> Check:
    def fn(p: Project):
        tags = {k: v for k, v in p.tags().items() if re.fullmatch(rf"exp-{name}-v\d+", k)}
        ok = any(v["annotated"] and v["message"].strip() for v in tags.values())
        return ok, f"tags: {sorted(tags) or 'none named exp-' + name + '-vN'}"
    return (f"tag-exp-{name}", f"The experiment's commit has an annotated tag exp-{name}-vN", fn)


def main_tag_with(version: str) -> Check:
    def fn(p: Project):
        found = []
        for name, t in p.new_tags().items():
            if name.startswith("exp-") or not t["annotated"]:
                continue
            if not p.is_ancestor(t["commit"], "refs/heads/main"):
                continue
            if any(r.get("version") == version for r in p.db_at(t["commit"]).values()):
                found.append(name)
        return bool(found), (f"new tags on main recording {version}: {found}" if found else
                             f"no new annotated tag on main whose results DB has {version}")
    return ("tag-main", f"A new annotated tag on main records the merged results "
                        f"(its results DB has the {version} run)", fn)


def main_tracked_unchanged() -> Check:
    return file_unchanged("train.py")


# --- the tasks ---------------------------------------------------------------------------

def done_before_crash_kept() -> Check:
    def fn(p: Project):
        runs = p.runs()
        want = p.start.get("done_before_crash", [])
        lost = [t for t in want if t not in runs]
        return not lost and bool(want), (f"lost: {lost}" if lost else
                                         f"{want} (finished before the crash) kept, not redone")
    return ("not-redone", "The runs that finished before the crash are in the results DB "
                          "under their original run ids (resumed, not redone)", fn)


def rollback_reason() -> Check:
    def fn(p: Project):
        pat = re.compile(r"false[\s-]*positive", re.I)
        new = p.ledger()[len(p.start["ledger"]):]
        where = [f"ledger entry {e.get('action')}" for e in new if pat.search(json.dumps(e))]
        where += [f"tag {n}" for n, t in p.new_tags().items() if pat.search(t["message"])]
        return bool(where), ("reason found in: " + ", ".join(where) if where else
                             "'false positives' is in no new ledger entry or tag message")
    return ("reason", "Why production was rolled back (too many false positives) is recorded in "
                      "the ledger or the new tag's message", fn)


def new_tag_records_prod() -> Check:
    def fn(p: Project):
        prod = p.path / PROD
        cur = md5_file(prod) if prod.is_file() else None
        found = [n for n, t in p.new_tags().items()
                 if t["annotated"] and p.out_md5(t["commit"], PROD) == cur
                 and t["commit"] == p.out("rev-parse", "HEAD")]
        return bool(found), (f"new tags at HEAD recording production md5 {cur}: {found}"
                             if found else f"no new annotated tag at HEAD records md5 {cur} "
                                           f"(new tags: {sorted(p.new_tags())})")
    return ("tag-new", "A new annotated tag at HEAD records the restored production model", fn)


def runs_unchanged() -> Check:
    def fn(p: Project):
        now = {t: r["rows"] for t, r in p.runs().items()}
        return now == p.start["run_rows"], f"runs now {now}; at start {p.start['run_rows']}"
    return ("runs-unchanged", "The results DB has exactly the runs and rows it had", fn)


def answer_file() -> Path:
    return Path("CHANGES.md")


def changes_mentions(what: str) -> Check:
    def fn(p: Project):
        f = p.path / answer_file()
        if not f.is_file():
            return False, f"{answer_file()} does not exist"
        text = f.read_text(errors="replace")
        runs = p.start["runs"]
        metrics = p.start["metrics"]
        if what == "metric":
            miss = [v for v in runs if not mentions_value(text, metrics[v])]
            return not miss, (f"{METRIC} {metrics}; missing for {miss}" if miss
                              else f"gives {METRIC} of both versions: {metrics}")
        if what == "param":
            miss = [v for v, lr in (("e0.1.0", 0.05), ("e0.2.0", 0.5))
                    if not mentions_param(text, "lr", lr, True) and not
                    mentions_param(text, "learning rate", lr, True)
                    and not mentions_param(text, "learning_rate", lr, True)]
            return not miss, ("gives lr 0.05 -> 0.5" if not miss else
                              f"lr of {miss} not given as 'lr ... VALUE'")
        rows = p.start["train_rows"]
        md5s = p.start["train_md5"]
        has_name = "train.parquet" in text or "training data" in text.lower()
        has_rows = all(mentions_value(text, n, 0) for n in rows.values())
        has_md5 = all(m[:6] in text for m in md5s.values())
        ok = has_name and (has_rows or has_md5)
        return ok, (f"train.parquet named: {has_name}; rows {rows} given: {has_rows}; "
                    f"md5 prefixes given: {has_md5}")
    texts = {"metric": f"{answer_file()} gives the {METRIC} of e0.1.0 and of e0.2.0",
             "param": f"{answer_file()} says the learning rate went from 0.05 to 0.5",
             "data": f"{answer_file()} says the training data changed (train.parquet, with its "
                     "row counts or md5s)"}
    return (f"answer-{what}", texts[what], fn)


def head_unchanged() -> Check:
    def fn(p: Project):
        head, branch = p.out("rev-parse", "HEAD"), p.out("rev-parse", "--abbrev-ref", "HEAD")
        tags = sorted(p.tags())
        wts = p.out("worktree", "list", "--porcelain").count("\nworktree ") + 1
        ok = (head == p.start["head"] and branch == p.start["branch"]
              and tags == p.start["tags"] and wts == 1)
        return ok, (f"HEAD {head[:10]} on {branch} (start {p.start['head'][:10]} on "
                    f"{p.start['branch']}); tags {tags}; worktrees {wts}")
    return ("untouched", "The project was not moved: same commit and branch, no new tag, no "
                         "worktree left behind", fn)


def tracked_bytes_unchanged() -> Check:
    def fn(p: Project):
        bad = [rel for rel, sha in p.start["files"].items()
               if not (p.path / rel).is_file() or sha256_file(p.path / rel) != sha]
        return not bad, ("changed: " + ", ".join(bad) if bad else
                         f"{len(p.start['files'])} files byte-identical to the start")
    return ("bytes-unchanged", "Data, results DB, production model and train.py are "
                               "byte-identical to the start", fn)


def gitignore_kept() -> Check:
    def fn(p: Project):
        f = p.path / ".gitignore"
        lines = f.read_text().splitlines() if f.is_file() else []
        miss = [x for x in p.start["user_gitignore"] if x not in lines]
        return not miss, (f"missing user lines: {miss}" if miss else
                          f"user lines kept: {p.start['user_gitignore']}")
    return ("gitignore", "The user's own .gitignore lines are all still there", fn)


def data_tracked() -> Check:
    def fn(p: Project):
        bad = []
        for rel in ("data/train.parquet", "data/test.parquet"):
            md5 = p.out_md5("HEAD", rel)
            f = p.path / rel
            if md5 is None:
                bad.append(f"{rel}.dvc not committed")
            elif not f.is_file() or sha256_file(f) != p.start["files"][rel]:
                bad.append(f"{rel} bytes changed")
            elif md5_file(f) != md5:
                bad.append(f"{rel} does not match its .dvc")
        return not bad, "; ".join(bad) or "train and test data tracked by DVC, bytes unchanged"
    return ("data-tracked", "The data files are tracked by DVC (committed .dvc files), bytes "
                            "unchanged", fn)


def adopt_prod(p: Project) -> list[str]:
    runs = p.runs()
    cands = {t: r for t, r in runs.items() if r.get("version") in ("e0.1.0", "e0.2.0")}
    return best_run(cands)[0] or []


def adopt_candidates_differ() -> Check:
    def fn(p: Project):
        runs = p.runs()
        shas = {}
        for t, r in runs.items():
            c = p.candidate(t, str(r.get("version")))
            shas[t] = sha256_file(c)[:12] if c else None
        ok = len(shas) == 2 and None not in shas.values() and len(set(shas.values())) == 2
        return ok, f"candidates (sha256): {shas}"
    return ("candidates", "Each of the two runs has its own model kept as a candidate "
                          "(models/candidates/<version>--<run>.*), with different bytes", fn)


def ledger_appended_at_least_prod() -> Check:
    def fn(p: Project):
        led = p.ledger()
        if not led:
            return False, "no ledger entries"
        last = led[-1]
        want = adopt_prod(p)
        ok = (last.get("run_id") in want
              and (last.get("model") or {}).get("sha256") == p.prod_sha())
        return ok, (f"last entry: {last.get('action')} {last.get('run_id')}; best run {want}; "
                    f"sha256 {str((last.get('model') or {}).get('sha256'))[:12]} vs production "
                    f"{str(p.prod_sha())[:12]}")
    return ("ledger", "The ledger's last entry is the promotion of the better run, with the "
                      "production bytes' sha256", fn)


TASKS: dict[str, list[Check]] = {
    "sequential-baseline": [
        version_runs("e0.1.0", "lr", [1.0]), production_is_best(),
        ledger_appended(1, "promote", best_ids), tag_check("e0.1.0", "lr", of_version=True),
        tag_production_is_best("e0.1.0"), workspace_matches(), remote_complete(),
        cache_intact(), tree_clean(),
    ],
    "sweep-lr": [
        version_runs("e0.2.0", "lr", [0.01, 0.05, 0.1, 0.5, 1.0, 2.0]), start_runs_kept(),
        production_is_best(), ledger_appended(1, "promote", best_ids),
        tag_check("e0.2.0", "lr", of_version=True), tag_production_is_best("e0.2.0"),
        workspace_matches(), remote_complete(), cache_intact(), tree_clean(),
    ],
    "sweep-crash-resume": [
        version_runs("e0.2.0", "lr", [0.01, 0.05, 0.1, 0.5, 1.0, 2.0]),
        done_before_crash_kept(), start_runs_kept(), production_is_best(),
        ledger_appended(1, "promote", best_ids), tag_check("e0.2.0", "lr", of_version=True),
        workspace_matches(), remote_complete(), cache_intact(), tree_clean(),
    ],
    "worktree-experiment": [
        exp_run_merged("exp-poly", "features", "poly2"), start_runs_kept(),
        production_is_best(" (the experiment's run, which beats production)", "exp-poly"),
        ledger_appended(1, "promote", best_ids), exp_tag("poly"), main_tag_with("exp-poly"),
        worktree_gone("poly"), file_unchanged("train.py"), workspace_matches(),
        remote_complete(), cache_intact(), tree_clean(),
    ],
    "worktree-worse": [
        exp_run_merged("exp-quick", "epochs", 3), start_runs_kept(),
        production_is(start_prod, "Production is still the model it was (the experiment is "
                                  "worse, so it was not promoted)"),
        ledger_appended(0), exp_tag("quick"), main_tag_with("exp-quick"),
        worktree_gone("quick"), file_unchanged("train.py"), workspace_matches(),
        remote_complete(), cache_intact(), tree_clean(),
    ],
    "rollback-production": [
        production_is(first_promoted, "Production is byte for byte the model e0.1.0 had "
                                      "promoted (the previous one)"),
        ledger_appended(1, "rollback|promote"), rollback_reason(), new_tag_records_prod(),
        runs_unchanged(), workspace_matches(), remote_complete(), cache_intact(),
        tree_clean(),
    ],
    "what-changed": [
        changes_mentions("metric"), changes_mentions("param"), changes_mentions("data"),
        head_unchanged(), tracked_bytes_unchanged(), workspace_matches(), cache_intact(),
        tree_clean(allow=("CHANGES.md",)),
    ],
}


TASKS["adopt-own-train"] = [
    file_unchanged("train.py", at_tags=True), gitignore_kept(), data_tracked(),
    version_runs("e0.1.0", "learning_rate", [0.5]),
    version_runs("e0.2.0", "learning_rate", [0.1]), adopt_candidates_differ(),
    production_is_best(" of the two"), ledger_appended_at_least_prod(),
    tag_check("e0.1.0", "learning_rate", of_version=True),
    tag_check("e0.2.0", "learning_rate", of_version=True),
    tag_production_is_best("e0.2.0"), workspace_matches(), remote_complete(),
    cache_intact(), tree_clean(),
]
for _checks in TASKS.values():
    _ids = [c[0] for c in _checks]
    # two version_runs checks in one task need distinct ids
    for _i, _c in enumerate(_checks):
        if _ids.count(_c[0]) > 1:
            _checks[_i] = (f"{_c[0]}-{_ids[:_i + 1].count(_c[0])}", _c[1], _c[2])


def expectations(task: str) -> list[str]:
    return [text for _, text, _ in TASKS[task]]


def grade(task: str, project: Path) -> dict:
    if task not in TASKS:
        raise Usage(f"unknown task {task!r}; one of: {', '.join(TASKS)}")
    p = Project(project)
    if p.start.get("task") != task:
        raise Usage(f"{project} was made for task {p.start.get('task')!r}, not {task!r}")
    results = []
    for cid, text, fn in TASKS[task]:
        try:
            ok, evidence = fn(p)
        except Exception as e:  # a check that cannot run is a FAIL with the reason
            ok, evidence = False, f"could not check: {type(e).__name__}: {e}"
        results.append({"id": cid, "text": text, "passed": bool(ok), "evidence": evidence})
    passed = sum(r["passed"] for r in results)
    return {"status": "pass" if passed == len(results) else "fail", "task": task,
            "project": str(p.path), "expectations": results,
            "summary": {"passed": passed, "failed": len(results) - passed,
                        "total": len(results), "pass_rate": round(passed / len(results), 2)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grade.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python evals/grade.py sweep-lr "
                                       "/tmp/eval-sweep/project --json\n\nexit codes: 0 all "
                                       "expectations passed, 1 one or more failed, 2 usage")
    p.add_argument("task")
    p.add_argument("project")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    try:
        res = grade(a.task, Path(a.project))
    except Usage as e:
        print(f"grade.py: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for r in res["expectations"]:
            print(f"{'PASS' if r['passed'] else 'FAIL'}  {r['text']}\n      {r['evidence']}")
        s = res["summary"]
        print(f"{res['task']}: {s['passed']}/{s['total']} passed -> {res['status'].upper()}")
    return 0 if res["status"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
