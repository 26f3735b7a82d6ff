"""The demo is the main job: it must always pass, and leave a real project with --keep."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import yaml
from conftest import run_script, sh


def _md5(p) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()  # noqa: S324 - DVC's object names


def test_demo_runs_the_three_workflows_end_to_end(tmp_path):
    keep = tmp_path / "demo"
    cp = run_script("demo.py", "--json", "--keep", str(keep), cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["status"] == "ok"
    proj = keep / "project"
    assert set(out["tags"]) == {"e0.1.0", "e0.2.0", "e1.0.0", "exp-forest-v1",
                                "exp-more-data-v1"}
    msg = sh(["git", "tag", "-l", "e0.2.0", "--format=%(contents:subject)"], cwd=proj).stdout
    assert msg.startswith("model=logreg | C=") and "best of 4 runs" in msg

    # Every run landed exactly once: 1 sequential + 4 sweep + 2 worktree runs, 2 rows each.
    con = sqlite3.connect(proj / "results" / "experiments.db")
    assert con.execute('SELECT count(DISTINCT track_id), count(*) FROM "default"'
                       ).fetchone() == (7, 14)
    versions = dict(con.execute('SELECT version, count(DISTINCT track_id) FROM "default" '
                                'GROUP BY version').fetchall())
    assert versions == {"e0.1.0": 1, "e0.2.0": 4, "exp-forest": 1, "exp-more-data": 1}
    # ... through run.py / sweep.py (their lineage on every row), set up by init_project.py,
    # every promotion with its reason
    assert con.execute('SELECT count(*) FROM "default" WHERE ev_run IS NULL OR ev_commit IS '
                       'NULL').fetchone() == (0,)
    assert dict(con.execute('SELECT version, count(DISTINCT ev_command) FROM "default" '
                            'GROUP BY version').fetchall()) == {
        "e0.1.0": 1, "e0.2.0": 1, "exp-forest": 1, "exp-more-data": 1}
    assert yaml.safe_load((proj / "ev.yaml").read_text())["metric"] == "f1_score"
    ledger = [json.loads(ln) for ln in
              (proj / "models/production/ledger.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in ledger][:1] == ["baseline"] and all(
        e["reason"] for e in ledger)
    f1 = [r[0] for r in con.execute('SELECT f1_score FROM "default" WHERE f1_score IS NOT NULL')]
    assert len(f1) == 7 and all(0.8 < v <= 1.0 for v in f1)
    merges = [m for m in out["merges"] if m["what"] == "worktree results"]
    assert merges and merges[0]["re_merge_added"] == 0

    # Production is the promoted worktree run's model, byte for byte, and DVC agrees.
    run = out["promoted_from_worktree"]
    assert out["production"]["production"]["run_id"] == run
    assert out["production"]["production"]["in_sync"] is True
    model = proj / "models" / "production" / "model.bin"
    cand = next((proj / "models" / "candidates").glob(f"*--{run}.pkl"))
    assert _md5(model) == _md5(cand)
    dvc_md5 = yaml.safe_load((proj / "models/production/model.bin.dvc").read_text())
    assert dvc_md5["outs"][0]["md5"] == _md5(model)

    # Clean tree, worktrees gone, cache intact, every tag's model on the remote (push -T).
    assert sh(["git", "status", "--porcelain"], cwd=proj).stdout == ""
    assert len(sh(["git", "worktree", "list"], cwd=proj).stdout.splitlines()) == 1
    for obj in (proj / ".dvc" / "cache" / "files" / "md5").rglob("*"):
        if obj.is_file() and not obj.name.endswith(".dir"):
            assert obj.parent.name + obj.name == _md5(obj), obj
    # The demo ends with a chart and the one-file report, next to (not in) the project.
    charts = out["charts"]
    assert charts["chart"] == str(keep / "versions.png")
    assert charts["report"] == str(keep / "report.html")
    png = (keep / "versions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1200
    page = (keep / "report.html").read_text()
    assert len(page.encode()) == charts["report_bytes"] and "versions" in charts["report_charts"]
    for tag in out["tags"]:
        assert f'<tr data-tag="{tag}">' in page
    assert run in page  # the production run, in the ledger section

    remote = keep / "dvc-remote" / "files" / "md5"
    for tag in ("e0.1.0", "e0.2.0", "e1.0.0"):
        text = sh(["git", "show", f"{tag}:models/production/model.bin.dvc"], cwd=proj).stdout
        digest = yaml.safe_load(text)["outs"][0]["md5"]
        assert (remote / digest[:2] / digest[2:]).is_file(), tag


def test_demo_refuses_an_existing_keep_dir(tmp_path):
    cp = run_script("demo.py", "--keep", str(tmp_path), cwd=tmp_path)
    assert cp.returncode == 2
    assert cp.stderr.strip() == (f"demo.py: error: --keep {tmp_path} already exists; "
                                 "name a folder that does not exist yet")
