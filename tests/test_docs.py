"""Every fenced bash/sh/python block in SKILL.md and references/*.md runs, in order.

One throwaway project per document: a git repo on branch main with DVC initialised and a
default local-directory remote `storage`, committed; `$SKILL` is the bundle root. Markers:
  <!-- norun: reason -->             on the line before a block: not run (counted, kept few)
  <!-- test-setup ... -->            hidden bash run before the next block
  <!-- file: PATH -->                the next block (any language) is written to PATH
  <!-- needs: s3 -->                 anywhere in the document: a real S3-compatible server
                                     (moto) runs, $S3_ENDPOINT and a fresh $S3_BUCKET are set
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, init_dvc, init_git, make_bucket, sh

DOCS = [ROOT / "SKILL.md", *sorted((ROOT / "references").glob("*.md"))]
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
MAX_NORUN = 12  # blocks that cannot run here (real cloud accounts, hosted git): keep few

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(norun|file|test-setup)\s*:?(.*?)-->", re.S)


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    norun: str | None = None
    file: str | None = None
    setup: str = ""


def parse(doc: Path) -> list[Block]:
    text = doc.read_text()
    blocks, prev_end = [], 0
    for m in FENCE.finditer(text):
        between = text[prev_end:m.start()]
        b = Block(doc, text[:m.start()].count("\n") + 1, m.group(1).lower(), m.group(2))
        for mk in MARKER.finditer(between):
            kind, arg = mk.group(1), mk.group(2).strip()
            if kind == "norun":
                b.norun = arg
            elif kind == "file":
                b.file = arg
            else:
                b.setup += arg + "\n"
        blocks.append(b)
        prev_end = m.end()
    return blocks


def all_blocks() -> list[Block]:
    return [b for d in DOCS for b in parse(d)]


def test_norun_markers_are_few_and_give_a_reason():
    noruns = [b for b in all_blocks() if b.norun is not None and b.lang in RUNNABLE]
    assert all(len(b.norun) > 10 for b in noruns), [(b.doc.name, b.line) for b in noruns]
    assert len(noruns) <= MAX_NORUN


def test_every_doc_has_runnable_blocks_or_none_at_all():
    # Guards the parser itself: SKILL.md has runnable blocks, so a parse bug shows here.
    assert any(b.lang in RUNNABLE and b.norun is None for b in parse(ROOT / "SKILL.md"))


def _outside(tmp_path: Path) -> dict[Path, set[str]]:
    """What is beside the test's folder and at the root of the file system: a block must not
    add anything there (a relative DVC remote made `dvc push -T` write to /dvc-store)."""
    out = {}
    for d in (Path("/"), tmp_path.parent):
        try:
            out[d] = {n for n in os.listdir(d) if d != tmp_path.parent or n != tmp_path.name}
        except OSError:
            out[d] = set()
    return out


def _check_outside(before: dict[Path, set[str]], tmp_path: Path, where: str) -> None:
    after = _outside(tmp_path)
    new = {str(d / n) for d in before for n in after[d] - before[d]}
    assert not new, f"{where} wrote outside its project folders: {sorted(new)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_doc_blocks_run_in_order(doc, tmp_path, request):
    blocks = [b for b in parse(doc) if b.norun is None and (b.lang in RUNNABLE or b.file)]
    if not blocks:
        pytest.skip(f"{doc.name} has no runnable blocks")
    proj = init_dvc(init_git(tmp_path / "proj"), tmp_path / "dvc-remote")
    env = {"SKILL": str(ROOT), "PYTHON": sys.executable}
    if "<!-- needs: s3 -->" in doc.read_text():
        endpoint = request.getfixturevalue("s3_server")
        bucket = f"docs-{uuid.uuid4().hex[:10]}"
        make_bucket(endpoint, bucket)
        env.update(S3_ENDPOINT=endpoint, S3_BUCKET=bucket)
    outside = _outside(tmp_path)
    for b in blocks:
        where = f"{doc.name}:{b.line}"
        if b.setup.strip():
            sh(["bash", "-euo", "pipefail", "-c", b.setup], cwd=proj, env=env)
        if b.file:
            target = proj / b.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.code)
            continue
        if RUNNABLE[b.lang] == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", b.code]
        else:
            cmd = [sys.executable, "-c", b.code]
        cp = sh(cmd, cwd=proj, env=env, check=False)
        assert cp.returncode == 0, (f"{where} exited {cp.returncode}\n--- block\n{b.code}"
                                    f"--- stdout\n{cp.stdout}--- stderr\n{cp.stderr}")
        _check_outside(outside, tmp_path, where)


def test_the_outside_check_sees_a_write_beside_the_project(tmp_path):
    before = _outside(tmp_path)
    stray = tmp_path.parent / f"stray-{uuid.uuid4().hex[:8]}"
    stray.mkdir()
    try:
        with pytest.raises(AssertionError, match="wrote outside its project folders"):
            _check_outside(before, tmp_path, "x.md:1")
    finally:
        stray.rmdir()
    _check_outside(before, tmp_path, "x.md:1")


SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
FLAG = re.compile(r"--[a-z][a-z-]*")


def _help_parts(out: str) -> tuple[str, str]:
    """(the help without its exit codes, the exit codes paragraph)."""
    body, _, codes = out.partition("exit codes:")
    return body, codes


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exit_codes_name_only_flags_the_script_has(script):
    """Top level: every flag the exit codes name is one of the script's (or a subcommand's);
    each subcommand's exit codes name only its own flags."""
    from conftest import run_script

    out = run_script(script, "--help").stdout
    body, codes = _help_parts(out)
    assert codes, f"{script} --help has no exit codes"
    assert re.findall(r"^  (\d) ", codes, re.M)[:3] == ["0", "1", "2"]
    subs = re.findall(r"^    ([a-z][a-z-]+)(?:\s|$)", body.split("positional arguments:")[-1]
                      .split("options:")[0], re.M) if "COMMAND" in out.split("\n")[0] else []
    every = set(FLAG.findall(body))
    for sub in subs:
        sub_body, sub_codes = _help_parts(run_script(script, sub, "--help").stdout)
        assert set(FLAG.findall(sub_codes)) <= set(FLAG.findall(sub_body)), (sub, sub_codes)
        every |= set(FLAG.findall(sub_body))
    assert set(FLAG.findall(codes)) <= every, (script, codes)


def test_a_refusal_names_the_override_flags_of_its_own_subcommand():
    from conftest import run_script

    lines = {s: [ln for ln in run_script("model_manager.py", s, "--help").stdout.splitlines()
                 if ln.startswith("  4  ")] for s in ("prune", "promote", "list")}
    assert lines == {
        "prune": ["  4  refused by a safety check; nothing changed (see the message, or "
                  "--force)"],
        "promote": ["  4  refused by a safety check; nothing changed (see the message, or "
                    "--force)"],
        "list": ["  4  refused by a safety check; nothing changed (the message says what to "
                 "do)"]}
