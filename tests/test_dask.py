"""sweep.py --executor dask on a real Dask cluster (scheduler + 2 workers on 127.0.0.1).

The workers cannot read the project (a tmpfs hides its folder in their mount namespace):
they get the code from the git remote and the data from the DVC remote, both in another
folder. Every case ends with runs counted per key, the candidates' bytes checked and the
DVC cache (and remote) re-hashed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import SCRIPTS, free_port, init_dvc, init_git, make_bucket, run_script, s3_objects, sh

dask_support = pytest.importorskip("dask_support")
pytest.importorskip("distributed")
if not dask_support.can_hide():
    pytest.skip("needs root and mount namespaces (unshare -m) to hide the project from the "
                "workers", allow_module_level=True)

TRAIN = '''\
import argparse, json, os, sys, time
from pathlib import Path
from xetrack import Tracker

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--size", type=int, default=64)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--fail", type=float, default=-1.0)
a = p.parse_args()
key = os.environ["EV_RUN_KEY"]
marks = Path(os.environ["EV_TEST_MARKS"])
info = {"key": key, "cwd": os.getcwd(), "start": time.time(),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "sees_project": os.path.exists(os.environ["EV_TEST_PROJECT"])}
(marks / f"{key}-{os.getpid()}.start").write_text(json.dumps(info))
rows = Path("data/train.csv").read_text().splitlines()
time.sleep(a.sleep)
if a.lr == a.fail:
    sys.exit(f"boom at lr={a.lr}")
Path("models/production").mkdir(parents=True, exist_ok=True)
Path("models/production/model.bin").write_bytes((f"lr={a.lr};".encode() * a.size)[:a.size])
Tracker("results/experiments.db", params={"lr": a.lr}).log(
    {"f1_score": round(1 - a.lr, 4), "n_rows": len(rows)})
info["end"] = time.time()
(marks / f"{key}-{os.getpid()}.end").write_text(json.dumps(info))
'''
CMD = ["--", "python", "train.py", "--lr", "{lr}", "--size", "{size}", "--sleep", "{sleep}",
       "--fail", "{fail}"]


def model_bytes(lr: float, size: int) -> bytes:
    return (f"lr={lr};".encode() * size)[:size]


@pytest.fixture(scope="module")
def env(tmp_path_factory, s3_server):
    """The project (hidden from workers), its git and DVC remotes, and the cluster (whose
    workers get the S3 server's test credentials from the environment, as real ones would)."""
    root = tmp_path_factory.mktemp("dask")
    home = root / "home"  # the workers see an empty tmpfs here
    remotes = root / "remotes"
    proj = init_dvc(init_git(home / "proj"), remotes / "dvc")
    sh(["git", "init", "-q", "--bare", str(remotes / "git.git")])
    sh(["git", "remote", "add", "origin", str(remotes / "git.git")], cwd=proj)
    (proj / "train.py").write_text(TRAIN)
    (proj / "data").mkdir()
    (proj / "data" / "train.csv").write_text("x,y\n1,0\n2,1\n3,1\n")
    sh("dvc add -q data/train.csv && git add -A && git commit -qm 'train.py, data' && "
       "git push -q origin main && dvc push -q", cwd=proj)
    marks = root / "marks"
    marks.mkdir()
    cluster = dask_support.Cluster(
        root / "cluster", home, n_workers=2, nthreads=2, resources="GPU=2",
        env={"EV_TEST_MARKS": str(marks), "EV_TEST_PROJECT": str(proj / "README.md")})
    cluster.start()
    try:
        yield {"proj": proj, "remotes": remotes, "marks": marks, "cluster": cluster,
               "s3": s3_server}
    finally:
        cluster.stop()


def write_grid(proj: Path, name: str, spec) -> Path:
    path = proj.parent / f"{name}.yaml"  # outside the repository: the tree stays clean
    path.write_text(yaml.safe_dump(spec))
    return path


def grid(lrs, size=64, sleep=0.0, fail=-1.0):
    return {"lr": lrs, "size": size, "sleep": sleep, "fail": fail}


def sweep(e, version, spec, *extra, threshold=None, scheduler=None, env=None):
    g = write_grid(e["proj"], version, spec)
    args = ["--repo", e["proj"], "--json", "--version", version, "--grid", g,
            "--executor", "dask", "--scheduler", scheduler or e["cluster"].address,
            "--model-output", "models/production/model.bin", *extra]
    if threshold is not None:
        args += ["--transfer-threshold", str(threshold)]
    return run_script("sweep.py", *args, *CMD, cwd=e["proj"], env=env)


def report(cp) -> dict:
    assert cp.stdout.strip(), cp.stderr
    return json.loads(cp.stdout)


def db_runs(proj: Path, version: str) -> dict[str, list]:
    """{ev_run: [(track_id, lr, f1_score), ...]} of the version's rows in the results DB."""
    con = sqlite3.connect(proj / "results" / "experiments.db")
    try:
        out: dict[str, list] = {}
        for k, tid, lr, f1 in con.execute(
                'SELECT ev_run, track_id, lr, f1_score FROM "default" WHERE version = ? '
                'ORDER BY 1', [version]):
            out.setdefault(k, []).append((tid, lr, f1))
        return out
    finally:
        con.close()


def check_end_state(e, version: str, lrs: list[float], size: int = 64) -> dict:
    """Every run once (one row, one track_id per key), candidates' bytes, caches re-hashed."""
    proj = e["proj"]
    runs = db_runs(proj, version)
    assert sorted(r[0][1] for r in runs.values()) == sorted(lrs)
    assert all(len(rows) == 1 for rows in runs.values()), runs  # no doubled or partial run
    for rows in runs.values():
        tid, lr, f1 = rows[0]
        assert f1 == round(1 - lr, 4)
        cand = proj / "models" / "candidates" / f"{version}--{tid}.bin"
        assert cand.read_bytes() == model_bytes(lr, size)
        assert cand.stat().st_nlink == 1  # a file of its own, never a link into the cache
    assert not (proj / "models" / "production" / "model.bin").exists()
    assert dask_support.rehash_cache(proj / ".dvc" / "cache") == []
    assert dask_support.rehash_cache(e["remotes"] / "dvc") == []
    assert sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd=proj).stdout == ""
    return runs


def marks_of(e, keys) -> list[dict]:
    out = []
    for f in sorted(e["marks"].glob("*.start")):
        info = json.loads(f.read_text())
        if info["key"] in keys:
            end = f.with_suffix(".end")
            info["ended"] = json.loads(end.read_text())["end"] if end.exists() else None
            out.append(info)
    return out


def test_four_run_sweep(env):
    e = env
    lrs = [0.1, 0.2, 0.3, 0.4]
    # a driver killed while pulling a big result left its stage: removed before submitting
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = e["proj"] / ".ev" / "incoming" / f"{gone}-{'c' * 32}"
    (stale / ".dvc").mkdir(parents=True)
    cp = sweep(e, "d1", grid(lrs))
    assert cp.returncode == 0, cp.stderr
    assert not stale.exists()
    rep = report(cp)
    assert rep["status"] == "ok" and rep["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    workers = {r["worker"] for r in rep["runs"]}
    assert workers <= e["cluster"].addresses() and len(workers) == 2
    assert all(r["seconds"] > 0 and r["timing"]["command_s"] >= 0 for r in rep["runs"])
    assert all(r["transfers"] == {"shard": "dask", "models/production/model.bin": "dask"}
               for r in rep["runs"])
    assert rep["executor"]["commit"] == sh(["git", "rev-parse", "HEAD"],
                                           cwd=e["proj"]).stdout.strip()
    assert rep["executor"]["dvc_inputs"] == ["data/train.csv"]
    # the checkout is made once per worker, then reused
    assert sum(not r["checkout_reused"] for r in rep["runs"]) <= 2
    assert rep["ranking"][0]["value"] == 0.9 and rep["ranking"][0]["params"]["lr"] == 0.1
    # one progress line per run on stderr: key, worker, seconds, metric (--json: still)
    runs = check_end_state(e, "d1", lrs)
    keys = set(runs)
    seen = marks_of(e, keys)
    assert len(seen) == 4 and not any(m["sees_project"] for m in seen)
    assert all("/worker-" in m["cwd"] for m in seen)
    # lineage stamped on the worker: the commit, the data md5, the params
    con = sqlite3.connect(e["proj"] / "results" / "experiments.db")
    commits = {r[0] for r in con.execute(
        "SELECT ev_commit FROM \"default\" WHERE version = 'd1'")}
    con.close()
    assert commits == {rep["executor"]["commit"]}
    # a finished sweep re-run runs nothing and needs no cluster
    again = sweep(e, "d1", grid(lrs), scheduler=f"tcp://127.0.0.1:{free_port()}")
    assert again.returncode == 0, again.stderr
    assert report(again)["counts"] == {"done": 0, "skipped": 4, "failed": 0}
    assert db_runs(e["proj"], "d1") == runs


def test_cluster_listens_on_loopback_only(env):
    c = env["cluster"]
    procs = [c.scheduler, *c.workers.values()]
    addrs = [a for p in procs for a in dask_support.listening(p.pid)]
    assert len(addrs) >= 2 * len(procs)  # the RPC port and the HTTP port of each
    assert all(a.startswith("127.0.0.1:") for a in addrs), addrs


def test_progress_lines_name_worker_seconds_metric(env):
    e = env
    g = write_grid(e["proj"], "d1p", grid([0.5, 0.6]))
    cp = run_script("sweep.py", "--repo", e["proj"], "--version", "d1p", "--grid", g,
                    "--executor", "dask", "--scheduler", e["cluster"].address,
                    "--model-output", "models/production/model.bin", *CMD, cwd=e["proj"])
    assert cp.returncode == 0, cp.stderr
    lines = [ln for ln in cp.stderr.splitlines() if "run-" in ln and ": done" in ln]
    assert len(lines) == 2, cp.stderr
    for ln in lines:
        assert " on tcp://127.0.0.1:" in ln and " s, f1_score=0." in ln, ln
    check_end_state(e, "d1p", [0.5, 0.6])


def keys_of(spec) -> set[str]:
    from _evlib.sweep import expand_grid, run_key

    return {run_key(p) for p in expand_grid(spec)}


def start_driver(e, version, spec) -> subprocess.Popen:
    g = write_grid(e["proj"], version, spec)
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / "sweep.py"), "--repo", str(e["proj"]), "--json",
         "--version", version, "--grid", str(g), "--executor", "dask", "--scheduler",
         e["cluster"].address, "--model-output", "models/production/model.bin", *CMD],
        cwd=e["proj"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(what, predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_worker_killed_mid_sweep(env):
    e, cluster = env, env["cluster"]
    lrs = [0.11, 0.12, 0.13, 0.14]
    spec = grid(lrs, sleep=4.0)
    keys = keys_of(spec)
    driver = start_driver(e, "d2", spec)
    victim = None
    try:
        first = wait_for("a run of the sweep starts", lambda: marks_of(e, keys))[0]
        victim = int(first["cwd"].split("/worker-")[1].split("/")[0])
        cluster.kill_worker(victim)  # SIGKILL, mid-run
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        if victim is not None:
            cluster.restart_worker(victim)
    assert driver.returncode == 0, err
    rep = json.loads(out)
    assert rep["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    runs = check_end_state(e, "d2", lrs)
    # the killed run started twice (once on the dead worker) and landed once, elsewhere
    starts = [m for m in marks_of(e, keys) if m["key"] == first["key"]]
    assert len(starts) == 2 and len(runs[first["key"]]) == 1
    # the dead worker's commands were ended with it (a watchdog), never finishing on their own
    ended = [m["key"] for m in marks_of(e, keys) if m["ended"]]
    assert sorted(ended) == sorted(keys)


def test_driver_killed_then_rerun(env):
    e = env
    spec = [grid([0.21, 0.22], sleep=0.0), grid([0.23, 0.24], sleep=5.0)]
    lrs = [0.21, 0.22, 0.23, 0.24]
    keys = keys_of(spec)
    shards = e["proj"] / "results" / "shards" / "d3"
    driver = start_driver(e, "d3", spec)
    try:
        wait_for("two runs land", lambda: len(list(shards.glob("run-*.db"))) >= 2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
    landed = {p.name[4:16] for p in shards.glob("run-*.db")}
    assert 2 <= len(landed) < 4
    cp = sweep(e, "d3", spec)
    assert cp.returncode == 0, cp.stderr
    rep = report(cp)
    assert rep["counts"]["skipped"] == len(landed)
    assert rep["counts"]["done"] == 4 - len(landed)
    assert {r["key"] for r in rep["runs"] if r["status"] == "skipped"} == landed
    runs = check_end_state(e, "d3", lrs)
    assert set(runs) == keys


def test_big_model_comes_back_through_the_dvc_remote(env):
    e = env
    size = 300_000
    before = set((e["remotes"] / "dvc").rglob("*"))
    # what a driver killed while pulling leaves (removed), and a live driver's (kept)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    incoming = e["proj"] / ".ev" / "incoming"
    dead, live = incoming / f"{gone}-{'a' * 32}", incoming / f"{os.getpid()}-{'b' * 32}"
    for d in (dead, live):
        (d / ".dvc").mkdir(parents=True)
        (d / "data").write_bytes(b"half a model")
    cp = sweep(e, "d4", grid([0.31, 0.32], size=size), threshold=100_000)
    assert cp.returncode == 0, cp.stderr
    assert sorted(x.name for x in incoming.iterdir()) == [live.name]
    rep = report(cp)
    assert all(r["transfers"] == {"shard": "dask", "models/production/model.bin": "dvc"}
               for r in rep["runs"])
    check_end_state(e, "d4", [0.31, 0.32], size=size)
    # the models are objects on the DVC remote, and in the project's cache
    from _evlib.atomic import md5_file
    from _evlib.dvcmeta import object_path

    for lr in (0.31, 0.32):
        blob = e["proj"].parent / f"m{lr}.bin"
        blob.write_bytes(model_bytes(lr, size))
        md5 = md5_file(blob)
        assert object_path(e["remotes"] / "dvc", md5).is_file()
        assert object_path(e["proj"] / ".dvc" / "cache", md5).is_file()
    assert set((e["remotes"] / "dvc").rglob("*")) > before


def test_a_run_that_fails_on_a_worker(env):
    e = env
    lrs = [0.41, 0.42, 0.43]
    cp = sweep(e, "d5", grid(lrs, fail=0.42))
    assert cp.returncode == 1
    rep = report(cp)
    assert rep["status"] == "failed"
    assert rep["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    (bad,) = rep["failed"]
    assert bad["params"]["lr"] == 0.42 and bad["exit_code"] == 1
    assert bad["error"] == "boom at lr=0.42"
    log = Path(rep["shards"]) / f"run-{bad['key']}.log"
    assert "boom at lr=0.42" in log.read_text()
    check_end_state(e, "d5", [0.41, 0.43])
    assert "sweep.py: warning: 1 run(s) failed" in cp.stderr


def test_gpus_per_run_one_device_per_run(env):
    e = env
    lrs = [0.51, 0.52, 0.53, 0.54]
    cp = sweep(e, "d6", grid(lrs, sleep=1.0), "--gpus-per-run", "1")
    assert cp.returncode == 0, cp.stderr
    rep = report(cp)
    runs = check_end_state(e, "d6", lrs)
    seen = marks_of(e, set(runs))
    assert len(seen) == 4 and all(m["gpus"] in ("0", "1") for m in seen)
    by_device: dict = {}
    for m in seen:  # a worker's GPU is never held by two runs at once
        worker = m["cwd"].split("/worker-")[1].split("/")[0]
        by_device.setdefault((worker, m["gpus"]), []).append((m["start"], m["ended"]))
    for spans in by_device.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert {r["gpus"] for r in rep["runs"]} <= {"0", "1"}
    con = sqlite3.connect(e["proj"] / "results" / "experiments.db")
    gpus = {r[0] for r in con.execute("SELECT ev_gpus FROM \"default\" WHERE version='d6'")}
    con.close()
    assert gpus <= {"0", "1"} and gpus
    # more GPUs per run than any worker has: refused before anything runs
    cp = sweep(e, "d6b", grid([0.55]), "--gpus-per-run", "3")
    assert cp.returncode == 4
    assert "no worker of tcp://127.0.0.1:" in cp.stderr and "offers 3 GPU(s)" in cp.stderr


def test_refusals_and_unreachable_scheduler(env):
    e = env
    proj = e["proj"]
    g = grid([0.61])
    # the scheduler unreachable: exit 1, one line naming the address and how to start one
    port = free_port()
    cp = sweep(e, "d7", g, "--connect-timeout", "2", scheduler=f"127.0.0.1:{port}")
    assert cp.returncode == 1
    lines = cp.stderr.strip().splitlines()
    assert lines[-1].startswith(f"sweep.py: error: cannot reach the Dask scheduler at "
                                f"tcp://127.0.0.1:{port}")
    assert "dask scheduler --host 127.0.0.1" in lines[-1]
    # usage: --executor dask needs --scheduler; Dask flags need --executor dask
    cp = run_script("sweep.py", "--repo", proj, "--version", "d7", "--grid",
                    write_grid(proj, "d7u", g), "--executor", "dask", *CMD, cwd=proj)
    assert (cp.returncode, cp.stderr.strip()) == (2, "sweep.py: error: --executor dask needs "
                                                  "--scheduler ADDRESS; e.g. --scheduler "
                                                  "tcp://127.0.0.1:8786")
    # a dirty tree: refused, by --dry-run too, before the cluster is contacted
    (proj / "train.py").write_text(TRAIN + "# edited\n")
    cp = sweep(e, "d7", g)
    assert cp.returncode == 4
    assert "uncommitted changes (train.py)" in cp.stderr and "commit them" in cp.stderr
    cp = sweep(e, "d7", g, "--dry-run", scheduler=f"127.0.0.1:{port}")
    assert cp.returncode == 4 and "uncommitted changes (train.py)" in cp.stderr
    # committed, not pushed
    sh("git commit -qam 'edit'", cwd=proj)
    try:
        cp = sweep(e, "d7", g)
        assert cp.returncode == 4
        assert "is not on git remote origin" in cp.stderr
        assert "git push origin main" in cp.stderr
    finally:
        sh("git reset -q --hard HEAD~1", cwd=proj)
    # a DVC input not on the remote
    (proj / "data" / "extra.csv").write_text("a\n1\n")
    sh("dvc add -q data/extra.csv && git add data && git commit -qm extra && "
       "git push -q origin main", cwd=proj)
    cp = sweep(e, "d7", g)
    assert cp.returncode == 4
    assert "DVC input(s) not on remote storage: data/extra.csv" in cp.stderr
    assert "dvc push data/extra.csv" in cp.stderr
    # dvc status --cloud exits 0 but prints no JSON (a plugin's banner, a truncated pipe):
    # that is no answer, not "nothing missing" (a wrapper stands in for dvc's status only)
    wrapper = proj.parent / "dvc-garbled-status"
    wrapper.write_text(f"#!/bin/sh\nif [ \"$1\" = status ]; then echo 'Updating...'; exit 0; "
                       f"fi\nexec {sys.executable} -m dvc \"$@\"\n")
    wrapper.chmod(0o755)
    cp = sweep(e, "d7", g, env={**os.environ, "EV_DVC": str(wrapper)})
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.strip().splitlines()[-1] == (
        "sweep.py: error: dvc status --cloud failed: Updating...; check that DVC remote "
        "storage is reachable")
    # only the inputs a run needs: --dvc-input narrows the check and the pull
    cp = sweep(e, "d7", g, "--dvc-input", "data/train.csv")
    assert cp.returncode == 0, cp.stderr
    assert report(cp)["executor"]["dvc_inputs"] == ["data/train.csv"]
    check_end_state(e, "d7", [0.61])


def test_docs_cluster_commands(env):
    """references/parallel-sweeps.md's local cluster, exactly as written (on a free port):
    start it, sweep on it, stop it."""
    import re

    from conftest import ROOT, wait_port

    e = env
    text = (ROOT / "references" / "parallel-sweeps.md").read_text()
    blocks = re.findall(r"<!-- norun: [^>]*test_docs_cluster_commands[^>]*-->\n```bash\n(.*?)```",
                        text, re.S)
    assert len(blocks) == 2
    port, http = str(free_port()), str(free_port())
    start, run = (b.replace("8786", port).replace("8787", http) for b in blocks)
    run = run.replace("e0.4.0", "d8")
    (e["proj"] / "grid.yaml").write_text("lr: [0.71, 0.72]\n")  # untracked: the sweep's own
    pids = e["proj"].parent / "dask-local"
    pids.mkdir(exist_ok=True)
    try:
        sh(["bash", "-euo", "pipefail", "-c", start], cwd=e["proj"],
           env={"EV_TEST_MARKS": str(e["marks"]),
                "EV_TEST_PROJECT": str(e["proj"].parent / "nonexistent")})
        wait_port(int(port), timeout=30)
        cp = sh(["bash", "-euo", "pipefail", "-c", run], cwd=e["proj"], check=False,
                env={"SKILL": str(ROOT)})
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith("sweep d8: 2 ran, 0 skipped (done before), 0 failed")
        for name in ("worker", "scheduler"):
            assert all(a.startswith("127.0.0.1:") for a in dask_support.listening(
                int((pids / f"{name}.pid").read_text())))
        for name in ("worker", "scheduler"):  # the stop line ended both
            pid = int((pids / f"{name}.pid").read_text())
            wait_for(f"{name} {pid} exits", lambda p=pid: not _alive(p), timeout=30)
    finally:
        for name in ("worker", "scheduler"):
            f = pids / f"{name}.pid"
            if f.exists() and _alive(int(f.read_text())):
                os.kill(int(f.read_text()), signal.SIGKILL)
        (e["proj"] / "grid.yaml").unlink()
    check_end_state(e, "d8", [0.71, 0.72])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not yet reaped) is gone
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_s3_dvc_remote_inputs_and_big_model(env):
    """A team's setup: the DVC remote is S3 (moto on 127.0.0.1); the inputs come from it and a
    model above the threshold goes back through it."""
    import hashlib

    e = env
    home = e["proj"].parent  # hidden from the workers, like the main project
    proj = init_git(home / "proj-s3")
    make_bucket(e["s3"], "dask-sweeps")
    sh(["dvc", "init", "-q"], cwd=proj)
    sh(["dvc", "remote", "add", "-d", "s3", "s3://dask-sweeps/store"], cwd=proj)
    sh(["dvc", "remote", "modify", "s3", "endpointurl", e["s3"]], cwd=proj)
    sh(["git", "init", "-q", "--bare", str(e["remotes"] / "git-s3.git")])
    sh(["git", "remote", "add", "origin", str(e["remotes"] / "git-s3.git")], cwd=proj)
    (proj / "train.py").write_text(TRAIN)
    (proj / "data").mkdir()
    (proj / "data" / "train.csv").write_text("x,y\n5,1\n")
    sh("dvc add -q data/train.csv && git add -A && git commit -qm s3 && "
       "git push -q origin main && dvc push -q", cwd=proj)
    size = 200_000
    g = write_grid(proj, "s1", grid([0.81, 0.82], size=size))
    cp = run_script("sweep.py", "--repo", proj, "--json", "--version", "s1", "--grid", g,
                    "--executor", "dask", "--scheduler", e["cluster"].address,
                    "--model-output", "models/production/model.bin",
                    "--transfer-threshold", "100000", *CMD, cwd=proj)
    assert cp.returncode == 0, cp.stderr
    rep = report(cp)
    assert rep["executor"]["dvc_remote"] == "s3"
    assert all(r["transfers"]["models/production/model.bin"] == "dvc" for r in rep["runs"])
    runs = check_end_state({**e, "proj": proj}, "s1", [0.81, 0.82], size=size)
    assert len(runs) == 2
    objs = s3_objects(e["s3"], "dask-sweeps")
    for key, data in objs.items():  # every object on the remote is what its name says
        want = "".join(key.split("/")[-2:]).removesuffix(".dir")
        assert hashlib.md5(data).hexdigest() == want, key  # noqa: S324
    for lr in (0.81, 0.82):
        md5 = hashlib.md5(model_bytes(lr, size)).hexdigest()  # noqa: S324
        assert f"store/files/md5/{md5[:2]}/{md5[2:]}" in objs


def test_workers_keep_only_the_newest_checkouts(env):
    """Each sweep at a new commit makes a checkout on every worker (its tree and pulled
    inputs); beyond EV_DASK_KEEP_CHECKOUTS (default 3) the least recently used go."""
    import hashlib

    e = env
    proj = e["proj"]
    hexname = set("0123456789abcdef")

    def checkouts(base: Path) -> set[str]:
        return {p.name for p in base.iterdir() if len(p.name) == 40 and set(p.name) <= hexname}

    bad = run_script("sweep.py", "--repo", proj, "--json", "--version", "k0", "--grid",
                     write_grid(proj, "k0", grid([0.91])), "--executor", "dask",
                     "--scheduler", e["cluster"].address, *CMD, cwd=proj,
                     env={**os.environ, "EV_DASK_KEEP_CHECKOUTS": "0"})
    assert bad.returncode == 2 and json.loads(bad.stdout)["status"] == "error"
    assert bad.stderr.strip().splitlines()[-1] == (
        "sweep.py: error: EV_DASK_KEEP_CHECKOUTS must be a whole number of 1 or more, not "
        "'0'; unset it (default 3) or set e.g. EV_DASK_KEEP_CHECKOUTS=2")
    (proj / "NOTES.md").write_text("a new commit\n")
    sh("git add NOTES.md && git commit -qm notes && git push -q origin main", cwd=proj)
    head = sh(["git", "rev-parse", "HEAD"], cwd=proj).stdout.strip()
    g = write_grid(proj, "k1", grid([0.91, 0.92, 0.93, 0.94]))
    cp = run_script("sweep.py", "--repo", proj, "--json", "--version", "k1", "--grid", g,
                    "--executor", "dask", "--scheduler", e["cluster"].address,
                    "--model-output", "models/production/model.bin", *CMD, cwd=proj,
                    env={**os.environ, "EV_DASK_KEEP_CHECKOUTS": "1"})
    assert cp.returncode == 0, cp.stderr
    rep = report(cp)
    # this project's folder on each worker (another project's, the S3 one's, is its own)
    url = rep["executor"]["git_remote"]
    bases = [d / "ev-sweep" / hashlib.sha256(url.encode()).hexdigest()[:12]
             for d in e["cluster"].root.glob("worker-*")]
    ran = [b for b in bases if b.is_dir() and head in checkouts(b)]
    assert ran, "no worker ran the sweep at the new commit"
    removed = {c for r in rep["runs"] for c in r["checkouts_removed"]}
    assert removed and head not in removed
    for b in ran:
        assert checkouts(b) == {head}
        wts = sh(["git", "worktree", "list", "--porcelain"], cwd=b / "repo").stdout
        assert {ln.split()[1].rsplit("/", 1)[-1] for ln in wts.splitlines()
                if ln.startswith("worktree ")} == {"repo", head}  # git knows them gone
    check_end_state(e, "k1", [0.91, 0.92, 0.93, 0.94])


def test_collect_checkouts_spares_the_newest_and_those_in_use(tmp_path):
    """No cluster: the keep-newest rule, and a checkout a run holds (its shared in-use lock)
    is never removed, however old."""
    import fcntl

    sys.path.insert(0, str(SCRIPTS))
    from _evlib import dask_task

    base = tmp_path / "base"
    names = [f"{i:040x}" for i in range(4)]
    for age, name in enumerate(names):  # names[0] newest
        ok = base / name / ".ev" / "checkout.ok"
        ok.parent.mkdir(parents=True)
        ok.write_text(name + "\n")
        (base / name / "data.bin").write_bytes(b"x" * 1000)
        os.utime(ok, (time.time() - 100 * age, time.time() - 100 * age))
    (base / "repo").mkdir()  # the mirror: never a checkout
    held = os.open(base / names[3] / ".ev" / "in-use.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        assert sorted(dask_task.collect_checkouts(base, keep=2)) == [names[2]]
    finally:
        os.close(held)
    assert sorted(p.name for p in base.iterdir()) == sorted([names[0], names[1], names[3],
                                                             "repo"])
    assert dask_task.collect_checkouts(base, keep=2) == [names[3]]  # released: now it goes
