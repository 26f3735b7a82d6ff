"""Shared fixtures: real git, real dvc with a local-directory remote, real xetrack DBs."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

# Deterministic identity, no prompts, no analytics, for every git/dvc the tests start.
os.environ.update({
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_TERMINAL_PROMPT": "0", "DVC_NO_ANALYTICS": "1",
    "GIT_CONFIG_NOSYSTEM": "1",
})
os.environ.pop("EV_TRACEBACK", None)
BIN = Path(sys.executable).parent
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def sh(cmd: list[str] | str, cwd=None, check: bool = True, env=None, input=None
       ) -> subprocess.CompletedProcess:
    """Run a command (list, or a bash string) and capture text output."""
    if isinstance(cmd, str):
        cmd = ["bash", "-euo", "pipefail", "-c", cmd]
    e = dict(os.environ)
    if env:
        e.update(env)
    cp = subprocess.run(cmd, cwd=cwd, env=e, input=input, text=True,
                        capture_output=True)
    if check and cp.returncode != 0:
        raise AssertionError(f"{cmd} exited {cp.returncode}\nstdout:\n{cp.stdout}\n"
                             f"stderr:\n{cp.stderr}")
    return cp


def run_script(name: str, *args: str, cwd=None, env=None, input=None
               ) -> subprocess.CompletedProcess:
    """Run scripts/<name> by absolute path, as a user or an agent would."""
    path = SCRIPTS / name
    cmd = ["bash", str(path)] if name.endswith(".sh") else [sys.executable, str(path)]
    return sh([*cmd, *map(str, args)], cwd=cwd, check=False, env=env, input=input)


def run_script_closed_stdout(name: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run scripts/<name> with stdout a pipe whose reader is gone (`| head -1` once head has
    exited): every write to it fails with EPIPE, deterministically."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd,
                              stdout=w, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    finally:
        os.close(w)


def init_git(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    sh(["git", "init", "-q", "-b", "main"], cwd=path)
    sh(["git", "config", "user.name", "Test"], cwd=path)
    sh(["git", "config", "user.email", "test@example.com"], cwd=path)
    (path / "README.md").write_text("test project\n")
    sh(["git", "add", "README.md"], cwd=path)
    sh(["git", "commit", "-q", "-m", "init"], cwd=path)
    return path


def init_dvc(path: Path, remote: Path) -> Path:
    remote.mkdir(parents=True, exist_ok=True)
    sh(["dvc", "init", "-q"], cwd=path)
    sh(["dvc", "config", "core.analytics", "false"], cwd=path)
    sh(["dvc", "remote", "add", "-d", "storage", str(remote)], cwd=path)
    sh(["git", "add", ".dvc", ".dvcignore"], cwd=path)
    sh(["git", "commit", "-q", "-m", "dvc init"], cwd=path)
    return path


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    return init_git(tmp_path / "proj")


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A git repo with DVC initialised and a local-directory default remote, committed."""
    return init_dvc(init_git(tmp_path / "proj"), tmp_path / "dvc-remote")


def make_xetrack_db(path: Path, rows: list[dict], params: dict | None = None) -> list[str]:
    """Log rows with a real xetrack Tracker (default engine); return the track ids used."""
    from xetrack import Tracker

    path.parent.mkdir(parents=True, exist_ok=True)
    t = Tracker(str(path), params=params or {})
    for row in rows:
        t.log(row)
    return [t.track_id]


def count_rows(db: Path, table: str = "default") -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    finally:
        con.close()


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "bench"))
    return dest


# --- a real S3-compatible server (moto's server mode) on 127.0.0.1 --------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """moto_server on a free loopback port for the whole session; yields its endpoint URL.

    Credentials come from the environment (fake ones moto accepts), never from a file.
    """
    port = free_port()
    os.environ.update(S3_ENV)
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def s3_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]


# Session fixtures of other areas, shared by several test modules (built once per session).
from charts_support import charts_hist  # noqa: E402, F401
