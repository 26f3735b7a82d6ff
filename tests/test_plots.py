"""experiments.py plot: PNG charts of known data, checked on matplotlib's own objects.

The figures are built by the same functions the CLI uses (plots.fig_*), so the number and
values of plotted points are read from their Line2D / PathCollection objects; the CLI's
PNGs are decoded and measured.
"""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from _evlib import plots, settings
from charts_support import DB, EPOCHS, F1, SWEEP, f1_at, loss_at
from conftest import init_git, run_script, sh
from PIL import Image


def decode(path_or_bytes) -> Image.Image:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every byte: a truncated file raises here
    return img


def plot(repo, *args, out):
    cp = run_script("experiments.py", "plot", "--json", "-o", str(out), *args, cwd=repo)
    return cp, (json.loads(cp.stdout) if cp.stdout.strip() else None)


# --- versions -----------------------------------------------------------------------------

def test_versions_figure_has_one_point_per_version(charts_hist):
    repo = charts_hist["repo"]
    recs = plots.history_records(repo, DB, "f1_score", "max")
    assert [r["tag"] for r in recs] == ["e0.1.0", "e0.2.0", "e1.0.0", "exp-forest-v1"]
    pts = plots.version_points(recs, charts_hist["ledger"],
                               plots.production_now(repo, charts_hist["ledger"]))
    fig = plots.fig_versions(pts, "f1_score", "max")
    ax_e, ax_x = fig.axes
    (line,) = ax_e.get_lines()
    assert list(line.get_xdata()) == [0, 1, 2]
    assert list(line.get_ydata()) == [F1["e0.1.0"], F1["e0.2.0"], F1["e1.0.0"]]
    # every e-tag was promoted once: three stars; the exp tag sits apart, not promoted
    (stars,) = ax_e.collections
    assert stars.get_offsets().tolist() == [[0, 0.80], [1, 0.88], [2, 0.91]]
    (exp,) = ax_x.collections
    assert exp.get_offsets().tolist() == [[0, F1["exp-forest-v1"]]]
    assert [t.get_text() for t in ax_x.get_xticklabels()][0].startswith("exp-forest-v1")
    # production after the rollback is e0.2.0's run, and only it says so
    notes = {t.get_text() for t in ax_e.texts}
    assert notes == {"0.8", "0.88\nproduction", "0.91"}
    assert ax_e.get_ylabel() == "f1_score (0-1, higher is better)"


def test_plot_versions_cli_writes_a_1200px_png(charts_hist, tmp_path):
    cp, out = plot(charts_hist["repo"], out=tmp_path / "v.png")
    assert cp.returncode == 0, cp.stderr
    img = decode(tmp_path / "v.png")
    assert img.size == (1200, 600) == (out["width_px"], out["height_px"])
    assert 10_000 < out["bytes"] == (tmp_path / "v.png").stat().st_size < 100_000
    assert out["points"] == 4 and out["metric"] == "f1_score" and out["mode"] == "max"
    assert {t: s["production"] for t, s in out["series"].items()} == {
        "e0.1.0": False, "e0.2.0": True, "e1.0.0": False, "exp-forest-v1": False}
    assert out["series"]["e0.2.0"]["run"] == charts_hist["best_sweep"]
    # the image is not blank: many colours, a fair share of non-white pixels
    rgb = img.convert("RGB")
    assert len(rgb.getcolors(1 << 20)) > 50


def test_metric_and_mode_from_ev_yaml_and_flags(charts_hist, tmp_path):
    repo = charts_hist["repo"]
    cp, out = plot(repo, "--metric", "loss", "--mode", "min", "--dry-run", out=tmp_path / "l.png")
    assert cp.returncode == 0, cp.stderr
    # loss is last logged at epoch 5: (1 + C/100) / 5; min mode picks the lowest per version
    assert out["series"]["e0.2.0"]["value"] == loss_at(0.01, EPOCHS)
    assert out["dry_run"] is True and not (tmp_path / "l.png").exists()
    (repo / "ev.yaml").write_text("metric: loss\nmode: min\n")
    try:
        cp, out2 = plot(repo, "--dry-run", out=tmp_path / "l.png")
        assert cp.returncode == 0, cp.stderr
        assert out2["metric"] == "loss" and out2["mode"] == "min"
        assert out2["series"] == out["series"]
    finally:
        (repo / "ev.yaml").unlink()


# --- sweep --------------------------------------------------------------------------------

def test_sweep_figure_one_panel_per_swept_param(charts_hist):
    repo = charts_hist["repo"]
    s = settings.load(repo)
    d = plots.sweep_for(repo, DB, "e0.2.0", "f1_score", "max", s.split, charts_hist["ledger"])
    assert list(d.params) == ["C", "solver"]  # model is the same in all four runs
    assert d.marked == charts_hist["best_sweep"] and d.marked_is_promoted
    fig = plots.fig_sweep(d)
    ax_c, ax_s = fig.axes
    runs, marked = ax_c.collections
    assert sorted(map(tuple, runs.get_offsets().tolist())) == sorted(
        (c, f) for c, _s, f in SWEEP)
    assert marked.get_offsets().tolist() == [[1.0, 0.88]]
    assert ax_c.get_xscale() == "log" and ax_c.get_xlabel() == "C (log scale)"
    assert ax_s.get_xscale() == "linear"
    assert [t.get_text() for t in ax_s.get_xticklabels()] == ["lbfgs", "liblinear"]
    runs_s, marked_s = ax_s.collections
    assert len(runs_s.get_offsets()) == 4
    assert marked_s.get_offsets().tolist() == [[0, 0.88]]  # lbfgs is slot 0


def test_plot_sweep_cli(charts_hist, tmp_path):
    cp, out = plot(charts_hist["repo"], "--kind", "sweep", "--version", "e0.2.0",
                   out=tmp_path / "s.png")
    assert cp.returncode == 0, cp.stderr
    assert decode(tmp_path / "s.png").size == (1200, out["height_px"])
    assert (out["points"], out["params"], out["marked_run"], out["marked_is_promoted"]) == (
        4, ["C", "solver"], charts_hist["best_sweep"], True)
    cp, out = plot(charts_hist["repo"], "--kind", "sweep", "--version", "e0.1.0",
                   out=tmp_path / "one.png")
    assert cp.returncode == 5 and not (tmp_path / "one.png").exists()
    assert cp.stderr.strip() == (
        f"experiments.py: error: version e0.1.0 has 1 run(s) with a numeric f1_score: "
        f"{charts_hist['runs']['e0.1.0'][0]} f1_score=0.8; a sweep chart needs two; pick a "
        "version with several runs (experiments.py list shows runs=N), or pass --metric")
    for args, err in ((["--kind", "sweep"], "--kind sweep needs --version"),
                      (["--version", "e0.2.0"], "--version is for --kind sweep or curves"),
                      (["--step", "epoch"], "--step is for --kind curves")):
        cp, _ = plot(charts_hist["repo"], *args, out=tmp_path / "x.png")
        assert cp.returncode == 2 and f"experiments.py: error: {err};" in cp.stderr, args


# --- curves -------------------------------------------------------------------------------

def test_curves_one_line_per_run_one_point_per_epoch(charts_hist):
    c, title = plots.curves_for(charts_hist["repo"], DB, "e0.2.0", "loss", None)
    fig = plots.fig_curves(c, title)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4 and c.step == "epoch" and title == "e0.2.0"
    by_run = {ln.get_label(): ln for ln in lines}
    assert set(by_run) == set(charts_hist["runs"]["e0.2.0"])
    for (cval, _s, _f), run in zip(SWEEP, charts_hist["runs"]["e0.2.0"], strict=True):
        assert list(by_run[run].get_xdata()) == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert list(by_run[run].get_ydata()) == [loss_at(cval, e) for e in range(1, 6)]
    assert fig.axes[0].get_xlabel() == "epoch"


def test_plot_curves_cli_every_run_of_the_working_tree(charts_hist, tmp_path):
    cp, out = plot(charts_hist["repo"], "--kind", "curves", "--metric", "f1_score",
                   out=tmp_path / "c.png")
    assert cp.returncode == 0, cp.stderr
    decode(tmp_path / "c.png")
    assert (out["lines"], out["runs"], out["points"], out["step"]) == (7, 7, 7 * EPOCHS,
                                                                        "epoch")
    c, _ = plots.curves_for(charts_hist["repo"], DB, None, "f1_score", None)
    final = sorted(ys[-1] for _xs, ys in c.lines.values())
    assert final == sorted([f1_at(F1["e0.1.0"], 5), *(f for *_r, f in SWEEP),
                            f1_at(F1["exp-forest-v1"], 5), f1_at(F1["e1.0.0"], 5)])
    cp, _ = plot(charts_hist["repo"], "--kind", "curves", "--step", "nope",
                 out=tmp_path / "n.png")
    assert cp.returncode == 5 and "no step column (nope)" in cp.stderr


# --- too little to chart, refusals, matplotlib missing -----------------------------------

@pytest.fixture
def tiny(tmp_path):
    """A git-only repo (the DB committed in git), with 0 or 1 tags as a test needs."""
    from xetrack import Tracker

    repo = init_git(tmp_path / "tiny")
    t = Tracker(str(repo / DB), params={"version": "e0.1.0", "model": "logreg", "C": 1.0})
    t.log({"f1_score": 0.5})
    sh("git add -A && git commit -q -m runs", cwd=repo)
    return repo


def test_empty_and_one_point_histories_say_so(tiny, tmp_path):
    cp, out = plot(tiny, out=tmp_path / "a.png")
    assert cp.returncode == 5 and out["status"] == "error"
    assert cp.stderr.strip() == (
        "experiments.py: error: no tagged version has a numeric f1_score; tag an experiment "
        "first (tag_suggest.py --create), or pass --metric")
    sh(["git", "tag", "-a", "e0.1.0", "-m", "model=logreg | f1_score=0.5 | first"], cwd=tiny)
    cp, _ = plot(tiny, out=tmp_path / "a.png")
    assert cp.returncode == 5
    assert cp.stderr.strip() == (
        "experiments.py: error: only one version has a f1_score: e0.1.0 f1_score=0.5; a chart "
        "needs two; tag another version, or read it with experiments.py show e0.1.0")
    assert not (tmp_path / "a.png").exists()


def test_sweep_of_a_version_not_tagged_yet(tiny, tmp_path):
    from xetrack import Tracker

    for c, f1 in ((0.1, 0.6), (1.0, 0.7), (10.0, 0.65)):
        Tracker(str(tiny / DB), params={"version": "e0.2.0", "model": "logreg", "C": c}
                ).log({"f1_score": f1})
    cp, out = plot(tiny, "--kind", "sweep", "--version", "e0.2.0", out=tmp_path / "s.png")
    assert cp.returncode == 0, cp.stderr
    assert out["points"] == 3 and out["params"] == ["C"] and out["marked_is_promoted"] is False
    runs = dict(sqlite3.connect(tiny / DB).execute(
        'SELECT track_id, f1_score FROM "default" WHERE version = ?', ("e0.2.0",)).fetchall())
    assert runs[out["marked_run"]] == 0.7  # the best, ringed: nothing was promoted
    cp, _ = plot(tiny, "--kind", "sweep", "--version", "e9.9.9", out=tmp_path / "t.png")
    assert cp.returncode == 5 and "no tag and no runs logged as 'e9.9.9'" in cp.stderr


def test_existing_output_is_refused_unless_force(charts_hist, tmp_path):
    dest = tmp_path / "v.png"
    dest.write_bytes(b"mine")
    cp, _ = plot(charts_hist["repo"], out=dest)
    assert cp.returncode == 4 and dest.read_bytes() == b"mine"
    cp, _ = plot(charts_hist["repo"], "--force", out=dest)
    assert cp.returncode == 0, cp.stderr
    decode(dest)


def test_missing_matplotlib_is_one_line_exit_1(charts_hist, tmp_path):
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    for cmd in (["plot", "-o", str(tmp_path / "v.png")],
                ["report", "-o", str(tmp_path / "r.html")]):
        cp = run_script("experiments.py", *cmd, cwd=charts_hist["repo"],
                        env={"PYTHONPATH": str(shim.parent)})
        assert cp.returncode == 1
        assert cp.stderr.splitlines() == [
            f"experiments.py: error: charts need matplotlib, which is not installed; "
            f"{plots.INSTALL}"]
        assert not list(tmp_path.glob("*.png")) + list(tmp_path.glob("*.html"))


def test_axis_labels_carry_units_and_direction():
    assert plots.axis_label("f1_score", "max") == "f1_score (0-1, higher is better)"
    assert plots.axis_label("loss", "min") == "loss (lower is better)"
    assert plots.axis_label("train_seconds") == "train_seconds (s)"
    assert plots.axis_label("latency_ms", "min") == "latency_ms (ms, lower is better)"
    assert plots.axis_label("C") == "C"
