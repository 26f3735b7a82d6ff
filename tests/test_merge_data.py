"""merge_artifacts.py on parquet data files (DuckDB), and the DVC pipeline template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import ROOT, SCRIPTS, count_rows, make_xetrack_db, run_script, sh


def write(path: Path, data: dict, schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data, schema=schema), path)
    return path


def read(path: Path) -> dict:
    return pq.read_table(path).to_pydict()


def merge(repo: Path, *args: str):
    return run_script("merge_artifacts.py", "--json", *args, cwd=repo)


def ok(cp) -> dict:
    assert cp.returncode == 0, (cp.stdout, cp.stderr)
    return json.loads(cp.stdout)


def test_merge_without_key_counts_duplicates_and_rerun_adds_nothing(git_repo):
    base = write(git_repo / "data/train.parquet", {"text": ["a", "b", "b"], "y": [0, 1, 1]})
    # The experiment's file is the base plus new samples (one an extra copy of "b").
    write(git_repo / "exp/train.parquet", {"text": ["a", "b", "b", "b", "c"],
                                           "y": [0, 1, 1, 1, 2]})
    args = ("--strategy", "merge", "--base-data", "data/train.parquet", "--exp-data",
            "exp/train.parquet", "--output-data", "data/train.parquet")
    rep = ok(merge(git_repo, *args))["data"]
    got = read(base)
    assert sorted(zip(got["text"], got["y"], strict=True)) == [
        ("a", 0), ("b", 1), ("b", 1), ("b", 1), ("c", 2)]
    assert rep["inputs"][0] == {"path": str(git_repo / "exp/train.parquet"), "read": 5,
                                "added": 2, "skipped": 3, "replaced": 0,
                                "columns_added": [], "type_widenings": []}
    rep = ok(merge(git_repo, *args))["data"]
    assert rep["inputs"][0]["added"] == 0 and rep["rows_out"] == 5
    assert pq.read_table(base).num_rows == 5


def test_merge_several_files_counts_each_file(git_repo):
    write(git_repo / "base.parquet", {"t": ["a"]})
    write(git_repo / "e1.parquet", {"t": ["a", "b"]})
    write(git_repo / "e2.parquet", {"t": ["a", "b", "c", "c"]})
    rep = ok(merge(git_repo, "--base-data", "base.parquet", "--exp-data", "e1.parquet",
                   "e2.parquet"))["data"]
    assert [(i["read"], i["added"], i["skipped"]) for i in rep["inputs"]] == [
        (2, 1, 1), (4, 2, 2)]
    assert sorted(read(git_repo / "base.parquet")["t"]) == ["a", "b", "c", "c"]


def test_merge_with_key_adds_only_new_keys(git_repo):
    write(git_repo / "base.parquet", {"id": [1, 2], "x": ["a", "b"]})
    write(git_repo / "exp.parquet", {"id": [2, 3], "x": ["b", "c"]})
    rep = ok(merge(git_repo, "--base-data", "base.parquet", "--exp-data", "exp.parquet",
                   "--key-columns", "id"))["data"]
    got = read(git_repo / "base.parquet")
    assert sorted(zip(got["id"], got["x"], strict=True)) == [(1, "a"), (2, "b"), (3, "c")]
    assert rep["inputs"][0]["added"] == 1 and rep["inputs"][0]["skipped"] == 1
    assert rep["conflicts"] == 0 and rep["inputs"][0]["conflicts"] == 0


def test_keyed_merge_with_different_values_is_a_conflict_unless_a_side_is_chosen(git_repo):
    """As the DB merge: exit 3, nothing written, one line; --on-conflict picks the side."""
    base = write(git_repo / "base.parquet", {"id": [1, 2, 4], "x": ["a", "b", "d"]})
    write(git_repo / "exp.parquet", {"id": [2, 3, 4], "x": ["B", "c", "d"]})
    before = base.read_bytes()
    args = ("--base-data", "base.parquet", "--exp-data", "exp.parquet", "--key-columns", "id")
    cp = run_script("merge_artifacts.py", *args, cwd=git_repo)
    assert cp.returncode == 3 and cp.stdout == ""
    assert cp.stderr == (f"merge_artifacts.py: error: 1 row(s) have the same key but different "
                         f"values (id=2 in {git_repo / 'exp.parquet'}); nothing written; re-run "
                         f"with --on-conflict keep-base or keep-exp to choose which side wins\n")
    assert json.loads(merge(git_repo, *args).stdout)["code"] == 3
    assert base.read_bytes() == before
    assert sorted(p.name for p in git_repo.iterdir() if p.suffix == ".parquet") == [
        "base.parquet", "exp.parquet"]

    rep = ok(merge(git_repo, *args, "--on-conflict", "keep-base", "--output-data",
                   "kb.parquet"))["data"]
    assert read(git_repo / "kb.parquet") == {"id": [1, 2, 4, 3], "x": ["a", "b", "d", "c"]}
    assert (rep["on_conflict"], rep["conflicts"], rep["rows_out"]) == ("keep-base", 1, 4)
    assert {k: rep["inputs"][0][k] for k in ("read", "added", "skipped", "conflicts",
                                             "replaced")} == {
        "read": 3, "added": 1, "skipped": 1, "conflicts": 1, "replaced": 0}

    rep = ok(merge(git_repo, *args, "--on-conflict", "keep-exp"))["data"]
    assert read(base) == {"id": [1, 4, 2, 3], "x": ["a", "d", "B", "c"]}
    assert (rep["on_conflict"], rep["conflicts"], rep["replaced"]) == ("keep-exp", 1, 1)
    assert {k: rep["inputs"][0][k] for k in ("added", "skipped", "conflicts", "replaced")} == {
        "added": 2, "skipped": 1, "conflicts": 1, "replaced": 1}
    # Now both sides agree: a re-run without the flag adds nothing and is no conflict.
    rep = ok(merge(git_repo, *args))["data"]
    assert (rep["conflicts"], rep["inputs"][0]["added"]) == (0, 0)


def test_rebase_keeps_exp_rows_and_later_file_wins(git_repo):
    write(git_repo / "base.parquet", {"id": [1, 2, 3], "x": ["a", "b", "c"]})
    write(git_repo / "e1.parquet", {"id": [2, 4], "x": ["e1-2", "e1-4"]})
    write(git_repo / "e2.parquet", {"id": [4], "x": ["e2-4"]})
    rep = ok(merge(git_repo, "--strategy", "rebase", "--base-data", "base.parquet",
                   "--exp-data", "e1.parquet", "e2.parquet", "--key-columns", "id",
                   "--output-data", "out.parquet"))["data"]
    got = read(git_repo / "out.parquet")
    assert sorted(zip(got["id"], got["x"], strict=True)) == [
        (1, "a"), (2, "e1-2"), (3, "c"), (4, "e2-4")]
    assert rep["replaced"] == 1 and rep["added"] == 2 and rep["superseded_by_later_exp"] == 1


def test_exp_values_take_the_base_schema_where_exact_and_columns_are_appended(git_repo):
    write(git_repo / "base.parquet", {"id": pa.array([1, 2], pa.int64()),
                                      "score": pa.array([1.0, 2.0], pa.float64())})
    write(git_repo / "exp.parquet", {"score": pa.array([0.5], pa.float32()),
                                     "id": pa.array([3], pa.int32()),
                                     "extra": ["new"]})
    rep = ok(merge(git_repo, "--base-data", "base.parquet", "--exp-data", "exp.parquet",
                   "--output-data", "out.parquet"))["data"]
    t = pq.read_table(git_repo / "out.parquet")
    assert t.schema.field("id").type == pa.int64()
    assert t.schema.field("score").type == pa.float64()
    assert t.to_pydict() == {"id": [1, 2, 3], "score": [1.0, 2.0, 0.5],
                             "extra": [None, None, "new"]}
    assert sorted((w["column"], w["from"], w["to"], w["how"])
                  for w in rep["type_widenings"]) == [("id", "int32", "int64", "exact"),
                                                      ("score", "float", "double", "exact")]
    assert rep["inputs"][0]["columns_added"] == [{"column": "extra", "type": "string"}]


def test_decimal_into_a_wider_base_decimal_is_exact(git_repo):
    from decimal import Decimal

    write(git_repo / "base.parquet", {"p": pa.array([Decimal("12345.60")], pa.decimal128(7, 2))})
    write(git_repo / "exp.parquet", {"p": pa.array([Decimal("0.25")], pa.decimal128(3, 2))})
    ok(merge(git_repo, "--base-data", "base.parquet", "--exp-data", "exp.parquet"))
    t = pq.read_table(git_repo / "base.parquet")
    assert t.schema.field("p").type == pa.decimal128(7, 2)
    assert t.column("p").to_pylist() == [Decimal("12345.60"), Decimal("0.25")]


def test_lossy_type_difference_is_an_error_naming_column_files_types(git_repo):
    write(git_repo / "base.parquet", {"id": [1], "label": [0]})
    write(git_repo / "exp.parquet", {"id": [2], "label": ["spam"]})
    before = (git_repo / "base.parquet").read_bytes()
    cp = merge(git_repo, "--base-data", "base.parquet", "--exp-data", "exp.parquet")
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines() == [
        f"merge_artifacts.py: error: {git_repo / 'exp.parquet'} column 'label' is string, the "
        "base's is int64: no exact conversion; nothing written; cast the column in one file so "
        "the types match, then re-run"]
    assert (git_repo / "base.parquet").read_bytes() == before


def test_bad_data_inputs_are_exact_single_lines_and_nothing_written(git_repo):
    write(git_repo / "base.parquet", {"id": [1]})
    write(git_repo / "exp.parquet", {"id": [2]})
    (git_repo / "fake.parquet").write_text("id\n1\n")
    before = (git_repo / "base.parquet").read_bytes()
    pre = "merge_artifacts.py: error: "
    cases = [
        (["--exp-data", "exp.parquet", "missing.parquet"],
         f"{pre}--exp-data {git_repo / 'missing.parquet'}: no such file; check the path "
         "(relative paths are from the current directory)"),
        (["--exp-data", "fake.parquet"],
         f"{pre}--exp-data {git_repo / 'fake.parquet'} is not a parquet file; pass a .parquet "
         "data file"),
        (["--exp-data", "exp.parquet", "--strategy", "rebase", "--key-columns", "uid"],
         f"{pre}key column 'uid' is not in {git_repo / 'base.parquet'} (columns: id); check "
         "--key-columns"),
        (["--exp-data", "exp.parquet", "--strategy", "rebase"],
         f"{pre}--strategy rebase of data files needs --key-columns; name the columns that "
         "identify a row, e.g. --key-columns id"),
    ]
    for extra, line in cases:
        cp = merge(git_repo, "--base-data", "base.parquet", *extra)
        assert cp.returncode == 2, (extra, cp.stderr)
        assert cp.stderr.strip().splitlines() == [line]
    assert (git_repo / "base.parquet").read_bytes() == before
    assert sorted(p.name for p in git_repo.iterdir()) == [
        ".git", "README.md", "base.parquet", "exp.parquet", "fake.parquet"]


def test_bad_data_input_stops_the_db_merge_too(git_repo):
    """All inputs are validated before anything is written, across DB and data."""
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.5}])
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.6}])
    write(git_repo / "base.parquet", {"id": [1]})
    before = (git_repo / "base.db").read_bytes()
    cp = merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db", "--base-data",
               "base.parquet", "--exp-data", "typo.parquet")
    assert cp.returncode == 2 and "typo.parquet: no such file" in cp.stderr
    assert (git_repo / "base.db").read_bytes() == before


def test_hostile_paths_and_column_names_in_parquet(git_repo):
    d = git_repo / "dätä [v1]" / "it's \"q\" *"
    write(d / "base file.parquet", {"select": [1], "my col": ["a"]})
    write(d / "exp'x.parquet", {"select": [1, 2], "my col": ["a", "b"]})
    rep = ok(merge(git_repo, "--base-data", str(d / "base file.parquet"), "--exp-data",
                   str((d / "exp'x.parquet").relative_to(git_repo)), "--key-columns",
                   "select"))["data"]
    assert read(d / "base file.parquet") == {"select": [1, 2], "my col": ["a", "b"]}
    assert rep["rows_out"] == 2


def test_data_rebase_in_place_backs_up_and_output_equal_exp_refused(git_repo):
    write(git_repo / "base.parquet", {"id": [1, 2], "x": ["a", "b"]})
    write(git_repo / "exp.parquet", {"id": [2], "x": ["B"]})
    old = (git_repo / "base.parquet").read_bytes()
    cp = merge(git_repo, "--strategy", "rebase", "--base-data", "base.parquet", "--exp-data",
               "exp.parquet", "--key-columns", "id", "--output-data", "exp.parquet")
    assert cp.returncode == 4 and "is also an experiment input" in cp.stderr
    rep = ok(merge(git_repo, "--strategy", "rebase", "--base-data", "base.parquet",
                   "--exp-data", "exp.parquet", "--key-columns", "id"))["data"]
    assert Path(rep["backup"]).read_bytes() == old
    assert rep["restore"].startswith("cp ")
    assert sorted(zip(*read(git_repo / "base.parquet").values(), strict=True)) == [
        (1, "a"), (2, "B")]


def test_dvc_pipeline_template_repro(dvc_repo):
    """assets/dvc.yaml: merge stages read the strategy from params.yaml; DB output persists."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / "assets" / name, dvc_repo / name)
    params = dvc_repo / "params.yaml"
    params.write_text(params.read_text().replace("skill_dir: .", f"skill_dir: {ROOT}"))
    make_xetrack_db(dvc_repo / "shards/p0.db", [{"f1_score": 0.1}])
    make_xetrack_db(dvc_repo / "shards/p1.db", [{"f1_score": 0.2}])
    write(dvc_repo / "data/train.parquet", {"id": [1, 2], "x": ["a", "b"]})
    write(dvc_repo / "data/incoming.parquet", {"id": [2, 3], "x": ["b", "c"]})
    cp = sh(["dvc", "repro", "-q"], cwd=dvc_repo, check=False)
    assert cp.returncode == 0, cp.stderr
    assert count_rows(dvc_repo / "results/experiments.db") == 2
    got = read(dvc_repo / "data/merged/train.parquet")
    assert sorted(zip(got["id"], got["x"], strict=True)) == [(1, "a"), (2, "b"), (3, "c")]
    # A new shard re-runs the stage; persist keeps the old rows in the output DB.
    make_xetrack_db(dvc_repo / "shards/p2.db", [{"f1_score": 0.3}])
    # Relabelled rows: a merge would now be a conflict (exit 3); rebase makes them win.
    write(dvc_repo / "data/incoming.parquet", {"id": [2, 3], "x": ["B", "c"]})
    params.write_text(params.read_text().replace("data_strategy: merge",
                                                 "data_strategy: rebase"))
    sh(["dvc", "repro", "-q"], cwd=dvc_repo)
    assert count_rows(dvc_repo / "results/experiments.db") == 3
    got = read(dvc_repo / "data/merged/train.parquet")
    assert sorted(zip(got["id"], got["x"], strict=True)) == [(1, "a"), (2, "B"), (3, "c")]
    assert SCRIPTS.exists()


def test_data_dry_run_writes_nothing(git_repo):
    write(git_repo / "base.parquet", {"id": [1]})
    write(git_repo / "exp.parquet", {"id": [1, 2]})
    before = (git_repo / "base.parquet").read_bytes()
    rep = ok(merge(git_repo, "--dry-run", "--strategy", "rebase", "--base-data", "base.parquet",
                   "--exp-data", "exp.parquet", "--key-columns", "id"))["data"]
    assert rep["dry_run"] is True and rep["rows_out"] == 2 and "backup" not in rep
    assert (git_repo / "base.parquet").read_bytes() == before
    assert sorted(p.name for p in git_repo.iterdir()) == [".git", "README.md", "base.parquet",
                                                           "exp.parquet"]


def test_sigkill_mid_parquet_rebase_leaves_old_or_new_file(git_repo):
    import os
    import signal
    import subprocess
    import sys
    import time

    import duckdb

    base, exp = git_repo / "base.parquet", git_repo / "exp.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT i AS id, md5(i::VARCHAR) AS s FROM range(300000) t(i)) "
                f"TO '{base}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT i * 3 AS id, 'x' AS s FROM range(50000) t(i)) TO '{exp}' "
                f"(FORMAT parquet)")
    con.close()
    old, exp_before = base.read_bytes(), exp.read_bytes()
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "merge_artifacts.py"), "--strategy",
                             "rebase", "--base-data", "base.parquet", "--exp-data",
                             "exp.parquet", "--key-columns", "id"], cwd=git_repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline and not [p for p in git_repo.iterdir() if ".tmp" in p.name]:
        time.sleep(0.005)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert exp.read_bytes() == exp_before
    if base.read_bytes() != old:  # killed after the replace: the complete new file
        assert pq.read_metadata(base).num_rows == 300_000
    # The next run removes the dead run's temp; no litter is left.
    ok(merge(git_repo, "--strategy", "rebase", "--base-data", "base.parquet", "--exp-data",
             "exp.parquet", "--key-columns", "id", "--output-data", "base.parquet"))
    assert pq.read_metadata(base).num_rows == 300_000
    assert not [p.name for p in git_repo.iterdir() if ".tmp" in p.name]


def test_a_data_conflict_stops_a_db_and_data_merge_before_the_db_is_written(git_repo):
    make_xetrack_db(git_repo / "base.db", [{"f1_score": 0.1}])
    make_xetrack_db(git_repo / "exp.db", [{"f1_score": 0.2}])
    write(git_repo / "base.parquet", {"id": [1], "x": ["a"]})
    write(git_repo / "exp.parquet", {"id": [1], "x": ["A"]})
    before = (git_repo / "base.db").read_bytes()
    cp = merge(git_repo, "--base-db", "base.db", "--exp-db", "exp.db", "--base-data",
               "base.parquet", "--exp-data", "exp.parquet", "--key-columns", "id")
    assert cp.returncode == 3 and json.loads(cp.stdout)["code"] == 3
    assert (git_repo / "base.db").read_bytes() == before
    assert count_rows(git_repo / "base.db") == 1
