"""DVC on a real S3-compatible server (moto's server mode on 127.0.0.1): tags pushed with -T,
a fresh clone pulling a past tag with verify on, and a push interrupted by the server stopping.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port, make_bucket, s3_keys, s3_objects, sh, wait_port


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - DVC's object names


def out_md5(dvc_file: Path) -> str:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def add_s3_remote(repo: Path, endpoint: str, bucket: str, name: str = "s3store") -> None:
    """Remote URL and endpoint are committed; credentials stay in the environment."""
    make_bucket(endpoint, bucket)
    sh(["dvc", "remote", "add", "-d", "-f", name, f"s3://{bucket}/store"], cwd=repo)
    sh(["dvc", "remote", "modify", name, "endpointurl", endpoint], cwd=repo)
    sh(["git", "commit", "-qm", "dvc: s3 remote", ".dvc/config"], cwd=repo)


def experiment(repo: Path, version: str, *extra_data: str) -> None:
    """A sequential experiment: data, a real training run, the model promoted, all tagged."""
    sh([sys.executable, "prepare_data.py", *extra_data], cwd=repo)
    out = sh([sys.executable, "train.py", "--version", version], cwd=repo).stdout
    import json

    model_path = json.loads(out)["model_path"]
    (repo / "models" / "production").mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / model_path, repo / "models/production/model.bin.tmp")
    (repo / "models/production/model.bin.tmp").replace(repo / "models/production/model.bin")
    sh(["dvc", "add", "data/train.parquet", "data/test.parquet", "results/experiments.db",
        "models/production/model.bin"], cwd=repo)
    sh(["git", "add", "-A", "data", "results", "models/production", ".gitignore"], cwd=repo)
    sh(["git", "commit", "-qm", f"experiment: {version}"], cwd=repo)
    sh(["git", "tag", "-a", version, "-m", f"model=logreg | {version}"], cwd=repo)


@pytest.fixture
def s3_project(dvc_repo, s3_server):
    for name in ("train.py", "prepare_data.py"):
        shutil.copy(ROOT / "assets" / name, dvc_repo / name)
    (dvc_repo / ".gitignore").write_text("models/candidates/\n__pycache__/\n")
    sh(["git", "add", "train.py", "prepare_data.py", ".gitignore"], cwd=dvc_repo)
    sh(["git", "commit", "-qm", "training code"], cwd=dvc_repo)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    add_s3_remote(dvc_repo, s3_server, bucket)
    return dvc_repo, bucket


def test_config_holds_no_credentials(s3_project):
    repo, _ = s3_project
    config = (repo / ".dvc" / "config").read_text()
    assert "endpointurl" in config
    assert "secret" not in config.lower() and "access_key" not in config.lower()


def test_push_all_tags_then_fresh_clone_pulls_a_past_tag_with_verify(s3_project, s3_server,
                                                                      tmp_path):
    repo, bucket = s3_project
    experiment(repo, "e0.1.0")
    v1_model = out_md5(repo / "models/production/model.bin.dvc")
    v1_data = out_md5(repo / "data/train.parquet.dvc")
    experiment(repo, "e0.2.0", "--extra", "30")
    assert out_md5(repo / "data/train.parquet.dvc") != v1_data

    # Plain `dvc push` sends only what HEAD needs: e0.1.0's training data is not on the remote.
    sh(["dvc", "push"], cwd=repo)
    keys = s3_objects(s3_server, bucket)
    assert not any(k.endswith(v1_data[2:]) for k in keys)
    # `dvc push -T` sends every tag's objects.
    sh(["dvc", "push", "-T"], cwd=repo)
    objs = s3_objects(s3_server, bucket)
    for digest in (v1_model, v1_data):
        assert f"store/files/md5/{digest[:2]}/{digest[2:]}" in objs
    for key, body in objs.items():  # every object's bytes match its name
        assert key.replace("store/files/md5/", "").replace("/", "") == \
            hashlib.md5(body).hexdigest()  # noqa: S324

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)])
    sh(["dvc", "remote", "modify", "--local", "s3store", "verify", "true"], cwd=clone)
    sh(["git", "checkout", "-q", "e0.1.0"], cwd=clone)
    sh(["dvc", "pull"], cwd=clone)
    assert md5(clone / "models/production/model.bin") == v1_model
    assert md5(clone / "data/train.parquet") == v1_data
    assert not (clone / ".dvc" / "config").read_text().count("verify")  # --local only

    # The history script retrieves a past tag's model from the S3 remote alone.
    from conftest import run_script

    shutil.rmtree(repo / ".dvc" / "cache")
    out = tmp_path / "model-e0.1.0.bin"
    cp = run_script("experiments.py", "get", "e0.1.0", "models/production/model.bin",
                    "-o", str(out), "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert md5(out) == v1_model
    assert sh(["git", "status", "--porcelain"], cwd=repo).stdout == ""


def test_push_interrupted_by_server_stop_then_retried_is_complete(s3_project, s3_server,
                                                                  tmp_path):
    """SIGKILL the 'server' (a proxy in front of it) mid-push; retry; a fresh pull verifies."""
    repo, bucket = s3_project
    blobs = repo / "blobs"
    blobs.mkdir()
    import os

    for i in range(24):
        (blobs / f"b{i:03d}.bin").write_bytes(os.urandom(512 * 1024))
    sh(["dvc", "add", "blobs"], cwd=repo)
    sh(["git", "add", "blobs.dvc", ".gitignore"], cwd=repo)
    sh(["git", "commit", "-qm", "blobs"], cwd=repo)

    port = free_port()
    target = s3_server.rsplit(":", 1)[1]
    proxy_cmd = [sys.executable, str(ROOT / "tests" / "tcp_proxy.py"), str(port), target]
    proxy = subprocess.Popen([*proxy_cmd, "0.02"])  # slowed: ~8 s for the whole push
    wait_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    sh(["dvc", "remote", "modify", "--local", "s3store", "endpointurl", endpoint], cwd=repo)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "site")], cwd=repo)
    # One attempt per request (botocore) keeps the doomed push short; s3fs still retries a few.
    push = subprocess.Popen(["dvc", "push", "-j", "2"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AWS_MAX_ATTEMPTS": "1"})
    # Wait until part of the push has landed, then stop the server mid-push.
    import time

    deadline = time.time() + 60
    while time.time() < deadline and len(s3_keys(s3_server, bucket)) < 3:
        time.sleep(0.05)
    proxy.send_signal(signal.SIGKILL)
    proxy.wait()
    _, err = push.communicate(timeout=300)
    landed = len(s3_keys(s3_server, bucket))
    assert push.returncode != 0, "the push should fail when the server stops"
    assert 0 < landed < 25, landed  # interrupted for real: some, not all

    proxy = subprocess.Popen(proxy_cmd)
    try:
        wait_port(port)
        sh(["dvc", "push"], cwd=repo)
    finally:
        proxy.send_signal(signal.SIGKILL)
        proxy.wait()
    objs = s3_objects(s3_server, bucket)
    for key, body in objs.items():
        if "/files/md5/" in key and not key.endswith(".dir"):
            assert key.split("md5/")[1].replace("/", "") == hashlib.md5(body).hexdigest()  # noqa: S324

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)])
    sh(["dvc", "remote", "modify", "--local", "s3store", "verify", "true"], cwd=clone)
    sh(["dvc", "pull"], cwd=clone)
    for f in blobs.iterdir():
        assert md5(clone / "blobs" / f.name) == md5(f)


def test_teardown_gate_checks_the_s3_remote(s3_project):
    """worktree.py teardown refuses while an object is missing on the S3 remote."""
    from conftest import make_xetrack_db, run_script

    repo, _ = s3_project
    make_xetrack_db(repo / "results" / "experiments.db", [{"f1_score": 0.5}],
                    params={"version": "e0.1.0"})
    sh(["dvc", "add", "results/experiments.db"], cwd=repo)
    sh("git add -A results && git commit -qm results", cwd=repo)
    sh(["dvc", "push"], cwd=repo)
    cp = run_script("worktree.py", "create", "s3exp", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    wt = repo.parent / "exp-s3exp"
    (wt / "extra.bin").write_bytes(b"only in the experiment")
    sh(["dvc", "add", "extra.bin"], cwd=wt)
    sh("git add -A && git commit -qm extra && git tag -a exp-s3exp-v1 -m extra", cwd=wt)

    cp = run_script("worktree.py", "teardown", "s3exp", cwd=repo)
    assert cp.returncode == 4, cp.stderr
    assert "not on remote 's3store': extra.bin" in cp.stderr
    assert wt.is_dir()

    sh(["dvc", "push", "-T"], cwd=wt)
    cp = run_script("worktree.py", "teardown", "s3exp", "--json", cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert not wt.exists()


def test_prune_asks_the_s3_remote_before_deleting(s3_project):
    """prune --yes refuses (exit 4) to delete a candidate the S3 remote lacks (`dvc status
    -c`), and deletes it once pushed."""
    from conftest import run_script
    from xetrack import Tracker

    repo, _ = s3_project
    paths = []
    for f1 in (0.9, 0.1):
        t = Tracker(str(repo / "results/experiments.db"), params={"version": "e0.1.0"})
        t.log({"f1_score": f1})
        paths.append(f"models/candidates/e0.1.0--{t.track_id}.bin")
        (repo / paths[-1]).parent.mkdir(parents=True, exist_ok=True)
        (repo / paths[-1]).write_bytes(f"model of {t.track_id}\n".encode())
    sh(["dvc", "add", "-q", "models/candidates"], cwd=repo)
    prune = ["model_manager.py", "prune", "--keep", "1", "--metric", "f1_score", "--yes"]
    cp = run_script(*prune, cwd=repo)
    assert cp.returncode == 4, cp.stderr
    assert cp.stderr.splitlines() == [
        f"model_manager.py: error: 1 candidate(s) to delete are not on DVC remote 's3store': "
        f"{paths[1]} (md5 {md5(repo / paths[1])[:12]}); nothing deleted; run dvc push "
        "models/candidates.dvc and re-run, or pass --force to delete them anyway (then they "
        "are only in this machine's DVC cache, until a dvc gc)"]
    assert (repo / paths[1]).is_file()
    sh(["dvc", "push", "-q", "models/candidates.dvc"], cwd=repo)
    cp = run_script(*prune, cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert not (repo / paths[1]).exists() and (repo / paths[0]).is_file()
