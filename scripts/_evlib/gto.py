"""GTO-compatible registry tags (iterative/gto, the git-tag registry DVC Studio reads).

With `gto: true` in ev.yaml every promote/rollback of an alias also:
  - declares the model as a GTO artifact in artifacts.yaml (`model: {type: model, path: ...}`),
  - commits its own files (.dvc, .gitignore, ledger, artifacts.yaml: nothing else),
  - registers the model's bytes as a GTO version the first time they are promoted:
    annotated tag `model@vX.Y.Z` on that commit (patch bump of the highest version),
  - assigns the alias as a GTO stage: annotated tag `model#<alias>#N` (N one more than the
    artifact's highest counter, as `gto assign` numbers them) on the version's commit.
Tags are written with git (gto itself is not needed to write them; tests read them back
with the real `gto show`/`gto history`). Each step is idempotent: the tag messages carry the
ledger entry's id, so a re-run after a kill finds what was already done.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from .atomic import write_text
from .dvcmeta import load_yaml
from .proc import git, git_ok, run

INDEX = "artifacts.yaml"
_VER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


def artifact_name(s) -> str:
    name = (s.extra or {}).get("gto_artifact") or "model"
    return str(name)


def declare(repo: Path, name: str, path: str) -> bool:
    """Make artifacts.yaml declare the artifact (other entries kept). True if written."""
    import yaml

    p = repo / INDEX
    doc = load_yaml(p.read_text()) if p.exists() else {}
    want = {"type": "model", "path": path, "virtual": False}
    cur = doc.get(name) if isinstance(doc.get(name), dict) else {}
    if all(cur.get(k) == v for k, v in want.items()):
        return False
    doc[name] = {**cur, **want}
    write_text(p, yaml.safe_dump(doc, sort_keys=False))
    return True


def _tags(repo: Path, pattern: str) -> dict[str, str]:
    """tag -> message body for tags matching pattern."""
    out = git(repo, "for-each-ref", "--format=%(refname:strip=2)%00%(contents)%00%00",
              f"refs/tags/{pattern}")
    found = {}
    for rec in out.split("\0\0"):
        rec = rec.lstrip("\n")
        if rec:
            name, _, body = rec.partition("\0")
            found[name] = body
    return found


def registered(repo: Path, name: str) -> dict[str, str]:
    """version -> commit of each `name@vX.Y.Z` tag."""
    out = {}
    for t in _tags(repo, f"{name}@*"):
        v = t.split("@", 1)[1]
        if _VER.match(v):
            out[v] = git(repo, "rev-parse", f"{t}^{{commit}}")
    return out


def next_version(versions) -> str:
    best = max((tuple(map(int, _VER.match(v).groups())) for v in versions), default=None)
    if best is None:
        return "v0.0.1"
    return f"v{best[0]}.{best[1]}.{best[2] + 1}"


def version_for(repo: Path, s, md5: str, ledgers: list[list[dict]]) -> tuple[str, bool]:
    """(GTO version for these bytes, whether it must be registered now)."""
    for entries in ledgers:
        for e in reversed(entries):
            g = e.get("gto") or {}
            if (e.get("model") or {}).get("md5") == md5 and g.get("version"):
                return g["version"], False
    return next_version(registered(repo, artifact_name(s))), True


def _counter(repo: Path, name: str) -> int:
    n = 0
    for t in _tags(repo, f"{name}#*"):
        m = re.fullmatch(rf"{re.escape(name)}#[^#]+#(\d+)", t)
        if m:
            n = max(n, int(m.group(1)))
    return n


def commit_and_tag(repo: Path, a, intent: dict, s) -> None:
    """Commit the alias's files, then register/assign with GTO tags (each step idempotent)."""
    e = intent["entry"]
    g = e.get("gto") or {}
    name = artifact_name(s)
    paths = [a.dvc, f"{a.dir}/.gitignore", a.ledger]
    if g:
        declare(repo, name, s.production_model)
        paths.append(INDEX)
    head_ledger = run(["git", "show", f"HEAD:{a.ledger}"], cwd=repo, check=False).stdout
    if f'"id": "{e["id"]}"' not in head_ledger:
        git(repo, "add", "--", *paths)
        who = e.get("run_id") or e.get("source")
        subject = f"{e['action']} {a.name}: {who} (ledger {e['seq']})"
        body = (e.get("reason") or "").replace("\r", " ")
        git(repo, "commit", "-q", "-m", subject, *(["-m", body] if body else []),
            "--", *paths)
    if not g:
        return
    version, stage = g["version"], g["stage"]
    reg = f"{name}@{version}"
    if not git_ok(repo, "rev-parse", "-q", "--verify", f"refs/tags/{reg}"):
        git(repo, "tag", "-a", reg, "-m", f"Registering artifact {name} version {version}"
            f"\n\nev-entry: {e['id']}", "HEAD")
    target = git(repo, "rev-parse", f"{reg}^{{commit}}")
    done = [t for t, body in _tags(repo, f"{name}#{stage}#*").items()
            if f"ev-entry: {e['id']}" in body]
    if not done:
        tag = f"{name}#{stage}#{_counter(repo, name) + 1}"
        reason = " ".join((e.get("reason") or "").split())
        # GTO orders assignments by the tag's date (whole seconds): two in one second would
        # be ambiguous, so this one is dated at least a second after the artifact's last.
        last = [int(x) for x in git(repo, "for-each-ref", "--format=%(taggerdate:unix)",
                                    f"refs/tags/{name}#*").split() if x.isdigit()]
        when = max([int(time.time()), *[x + 1 for x in last]])
        run(["git", "tag", "-a", tag, "-m", f"Assigning stage {stage} to artifact {name} "
             f"version {version}\n\n{e['action']}: {reason}\nev-entry: {e['id']}", target],
            cwd=repo, env={"GIT_COMMITTER_DATE": f"@{when} +0000"}, what="git tag")
