"""Charts of the experiment history: matplotlib, headless (Agg canvas, no pyplot), offline.

Three charts, each built by a function that RETURNS the matplotlib Figure (tests count the
plotted points on its own Line2D / PathCollection objects; report.py embeds the PNG):
  versions - the ranking metric of each version's best run, e-tags in version order joined
             by a line, exp-NAME-vN tags in a panel of their own, promoted versions starred;
  sweep    - one version's runs: the metric against each param that varies between them
             (one panel per param, a log axis when the values span two decades or more),
             the promoted run (ledger) starred, else the best run ringed;
  curves   - rows that carry a step column (epoch, step, ...): the metric per step, one
             line per run.
Fewer than two points is a NothingToPlot error (exit 5) with the one value in its message,
never an empty chart. matplotlib is optional (the `plots` extra): missing, exit 1 with the
install line.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import EVENTS_TABLE, history
from .errors import FAILED, NOT_FOUND, EVError
from .sql import quote_ident, sqlite_columns, sqlite_connect, sqlite_tables

WIDTH_IN, DPI = 12.0, 100  # 1200 px wide: readable in a chat window and a CI artifact
STEP_COLUMNS = ("epoch", "step", "global_step", "iteration", "iter")
MIN_SLOT_PX = 95  # narrower slots per version: tag-only tick labels, fewer value labels
MAX_CURVES = 30  # lines per curves chart (the newest runs); more is unreadable
INSTALL = ("install it: pip install 'matplotlib>=3.7' (the bundle's `plots` extra: "
           "pip install '.[plots]' in the skill folder)")
BOUNDED = ("f1", "precision", "prec", "recall", "accuracy", "acc", "auc", "r2", "iou",
           "dice", "map", "ndcg")


class NothingToPlot(EVError):
    def __init__(self, message: str, hint: str):
        super().__init__(message, code=NOT_FOUND, hint=hint)


def require_matplotlib():
    """matplotlib's Figure class, on the Agg canvas (no display, no pyplot global state)."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EVError("charts need matplotlib, which is not installed", code=FAILED,
                      hint=INSTALL) from exc
    return Figure


def axis_label(col: str, mode: str | None = None) -> str:
    """The column with its unit where the name says it, and which way is better."""
    low = col.lower()
    unit = ""
    if low.endswith(("_seconds", "_secs", "_s")) or low in ("function_time", "ev_seconds"):
        unit = "s"
    elif low.endswith("_ms"):
        unit = "ms"
    elif low.endswith("_mb"):
        unit = "MB"
    elif any(low == b or low.startswith(b + "_") or low.endswith("_" + b) for b in BOUNDED) \
            or low == "f1_score":
        unit = "0-1"
    parts = [p for p in (unit, {"max": "higher is better", "min": "lower is better"}.get(
        mode or "")) if p]
    return f"{col} ({', '.join(parts)})" if parts else col


def png_bytes(fig) -> bytes:
    """The figure as PNG in a 256-colour palette: a chart loses nothing visible and the
    file is a third of the size (the report embeds several). Drawn once on the Agg canvas
    and encoded by Pillow (matplotlib's own dependency): no PNG round trip."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    w, h = canvas.get_width_height()
    img = Image.frombuffer("RGBA", (w, h), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    out = io.BytesIO()
    img.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
        out, format="PNG")
    return out.getvalue()


def _num(v) -> float | None:
    """history's number rule, and no infinities either: they cannot be plotted."""
    f = history._num(v)
    return None if f is None or math.isinf(f) else f


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _legend_below(fig) -> None:
    """One legend for the figure, under the panels: it never hides a point."""
    seen: dict = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=len(seen), fontsize=10, frameon=False)


# --- versions -----------------------------------------------------------------------------

@dataclass
class VersionPoint:
    tag: str
    version: str  # the version its rows were logged under (a tag's lineage may name another)
    date: str
    kind: str  # "e" or "exp"
    value: float | None
    run: str | None
    promoted: bool = False  # the ledger promoted this version's run at some time
    production: bool = False  # ... and it is in production now


def production_marks(ledger: list[dict]) -> tuple[set, dict | None]:
    """(promoted (version, run) pairs, the ledger's last production state) from ledger
    entries. Read defensively: entries written by other versions of the bundle may lack
    fields."""
    from .registry import replay

    promoted = {(e.get("version"), e.get("run_id")) for e in ledger
                if isinstance(e, dict) and e.get("action") == "promote"}
    try:
        # entries as parse_ledger gives them (a ledger older than `seq` counts lines)
        entries = [{"seq": n, **e} for n, e in
                   enumerate((e for e in ledger if isinstance(e, dict)), 1)]
        stacks = replay(entries)
        stack = stacks[-1] if stacks else []
    except (KeyError, TypeError, AttributeError):
        stack = []
    return promoted, (stack[-1] if stack else None)


def production_now(repo: Path, ledger: list[dict], warn=None) -> dict | None:
    """The ledger state production holds now, as `model_manager.py status` says: the
    ledger's last state if it is the model model.bin.dvc names (else, model.bin never
    dvc-added, its bytes), None otherwise: no model there, or one changed outside
    model_manager.py (then warned, when the ledger names another: no version is charted
    as production)."""
    from .dvcmeta import first_md5
    from .dvcstore import disk_md5
    from .registry import alias

    _, top = production_marks(ledger)
    a = alias(repo)
    try:
        p = repo / a.dvc
        md5 = (first_md5(p.read_text()) if p.is_file() else None) or disk_md5(repo, a, None)[0]
    except (EVError, OSError, UnicodeDecodeError) as exc:
        if warn:
            warn(f"{a.dvc} not read ({exc}); no version is charted as production")
        return None
    if top and top.get("md5") == md5:
        return top
    if top and warn:  # the ledger names a production model that is not the one there
        warn(f"{a.model} (md5 {md5}) is not the {a.name} model of {a.ledger} (changed outside "
             "model_manager.py; see model_manager.py status): no version is charted as "
             f"{a.name}")
    return None


def version_points(records: list[dict], ledger: list[dict], prod: dict | None
                   ) -> list[VersionPoint]:
    """prod: production_now's answer (the state production holds now, or None)."""
    promoted, _ = production_marks(ledger)
    pts = []
    for r in records:
        kind = "e" if r["tag"].startswith("e") and r["tag"][1:2].isdigit() else "exp"
        p = VersionPoint(r["tag"], r.get("version") or r["tag"], r.get("date") or "", kind,
                         _num(r.get("value")), r.get("best_run"))
        runs = {run.track_id for run in r["_summary"].runs} if "_summary" in r else {p.run}
        p.promoted = any(v == p.version and (rid in runs or rid is None) for v, rid in promoted)
        p.production = bool(prod and prod.get("version") == p.version
                            and (prod.get("run_id") in runs or prod.get("run_id") is None))
        pts.append(p)
    return pts


def fig_versions(points: list[VersionPoint], metric: str, mode: str):
    Figure = require_matplotlib()
    scored = [p for p in points if p.value is not None]
    if len(scored) < 2:
        if scored:
            one = scored[0]
            raise NothingToPlot(f"only one version has a {metric}: {one.tag} "
                                f"{metric}={_short(one.value)}; a chart needs two",
                                hint="tag another version, or read it with experiments.py show "
                                     f"{one.tag}")
        raise NothingToPlot(f"no tagged version has a numeric {metric}",
                            hint="tag an experiment first (tag_suggest.py --create), or pass "
                                 "--metric")
    e = [p for p in scored if p.kind == "e"]
    x = [p for p in scored if p.kind == "exp"]
    fig = Figure(figsize=(WIDTH_IN, 6.0), dpi=DPI, layout="constrained")
    share = 1.0 if not x else 0.0 if not e else \
        min(max(len(x) / (len(e) + len(x)), 0.22), 0.45)  # exp panel: readable, not main
    if e and x:
        gs = fig.add_gridspec(1, 2, width_ratios=[1 - share, share])
        ax_e = fig.add_subplot(gs[0])
        ax_x = fig.add_subplot(gs[1], sharey=ax_e)
    else:
        ax_e = fig.add_subplot(1, 1, 1) if e else None
        ax_x = None if e else fig.add_subplot(1, 1, 1)
    for ax, pts, title, style, width in (
            (ax_e, e, "e-tags (main line, version order)", "o-", 1 - share),
            (ax_x, x, "exp tags (worktree experiments)" if share > 0.3 else "exp tags", "D",
             share)):
        if ax is None:
            continue
        xs = list(range(len(pts)))
        ys = [p.value for p in pts]
        if style == "o-":
            ax.plot(xs, ys, "o-", color="#1f77b4", markersize=7, linewidth=2,
                    label=f"best run's {metric}")
        else:
            ax.scatter(xs, ys, marker="D", s=60, color="#7f7f7f", label="exp tag best run")
        promo = [(i, p) for i, p in enumerate(pts) if p.promoted]
        if promo:
            ax.scatter([i for i, _ in promo], [p.value for _, p in promo], marker="*", s=320,
                       color="#d62728", zorder=5, label="promoted to production")
        crowded = WIDTH_IN * DPI * 0.9 * width / len(pts) < MIN_SLOT_PX
        for i, p in enumerate(pts):
            if crowded and not (p.promoted or p.production):
                continue  # no room for every value label; the table has them
            note = _short(p.value) + ("\nproduction" if p.production else "")
            ax.annotate(note, (i, p.value), textcoords="offset points", xytext=(0, 12),
                        ha="center", fontsize=10, fontweight="bold" if p.production else None)
        if crowded:
            ax.set_xticks(xs, [p.tag for p in pts], fontsize=8, rotation=90)
        else:
            ax.set_xticks(xs, [f"{p.tag}\n{p.date[:10]}" for p in pts], fontsize=10)
        ax.set_xlim(-0.5, len(pts) - 0.5)
        ax.set_title(title, fontsize=12)
        ax.grid(True, axis="y", alpha=0.3)
    _legend_below(fig)
    first = ax_e or ax_x
    first.set_ylabel(axis_label(metric, mode), fontsize=11)
    lo = min(p.value for p in scored)
    hi = max(p.value for p in scored)
    pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 0.05
    first.set_ylim(lo - pad, hi + pad * 1.6)
    unscored = [p.tag for p in points if p.value is None]
    sub = f" (no {metric}: {', '.join(unscored)})" if unscored else ""
    fig.suptitle(f"{metric} of each version's best run{sub}", fontsize=14)
    return fig


# --- sweep --------------------------------------------------------------------------------

@dataclass
class SweepData:
    version: str
    metric: str
    mode: str
    runs: list  # runs.Run with a numeric metric
    params: dict[str, list]  # swept param -> value per run (same order as runs)
    marked: str | None  # track_id of the starred/ringed run
    marked_is_promoted: bool = False
    skipped: int = 0  # runs without a numeric metric
    constant: dict = field(default_factory=dict)  # params every run shares


def sweep_data(runs: list, version: str, metric: str, mode: str, split, ledger: list[dict],
               best: str | None) -> SweepData:
    """split(values) -> (params, metrics): the project's settings decide what a param is."""
    scored = [r for r in runs if _num(r.values.get(metric)) is not None]
    if len(scored) < 2:
        one = f": {scored[0].track_id} {metric}={_short(_num(scored[0].values[metric]))}" \
            if scored else ""
        raise NothingToPlot(f"version {version} has {len(scored)} run(s) with a numeric "
                            f"{metric}{one}; a sweep chart needs two",
                            hint="pick a version with several runs (experiments.py list shows "
                                 "runs=N), or pass --metric")
    per_run = [{k: v for k, v in split(r.values)[0].items() if k not in STEP_COLUMNS}
               for r in scored]
    keys = sorted({k for p in per_run for k in p})
    swept, constant = {}, {}
    for k in keys:
        vals = [p.get(k) for p in per_run]
        if len({_short(v) for v in vals}) > 1:
            swept[k] = vals
        else:
            constant[k] = vals[0]
    if not swept:
        raise NothingToPlot(f"the {len(scored)} runs of {version} share every param",
                            hint="a sweep chart needs a param that varies between runs")
    promoted = [e.get("run_id") for e in ledger if isinstance(e, dict)
                and e.get("action") == "promote" and e.get("version") == version]
    ids = {r.track_id for r in scored}
    marked = next((rid for rid in reversed(promoted) if rid in ids), None)
    return SweepData(version, metric, mode, scored, swept, marked or best, bool(marked),
                     len(runs) - len(scored), constant)


def _log_axis(vals: list[float]) -> bool:
    return all(v > 0 for v in vals) and max(vals) / min(vals) >= 100


def fig_sweep(d: SweepData):
    Figure = require_matplotlib()
    n = len(d.params)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(WIDTH_IN, 4.6 * rows + 0.6), dpi=DPI, layout="constrained")
    ys = [_num(r.values[d.metric]) for r in d.runs]
    mark_i = next((i for i, r in enumerate(d.runs) if r.track_id == d.marked), None)
    for n_ax, (name, vals) in enumerate(d.params.items()):
        ax = fig.add_subplot(rows, cols, n_ax + 1, sharey=fig.axes[0] if fig.axes else None)
        nums = [_num(v) for v in vals]
        if all(v is not None for v in nums):
            xs = nums
            if _log_axis(xs):
                ax.set_xscale("log")
        else:  # categorical (strings, or a mix): one slot per distinct value, in text order
            cats = sorted({_short(v) for v in vals})
            xs = [cats.index(_short(v)) for v in vals]
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.scatter(xs, ys, s=60, color="#1f77b4", alpha=0.85, label="run")
        if mark_i is not None:
            label = "promoted run" if d.marked_is_promoted else "best run (not promoted)"
            if d.marked_is_promoted:
                ax.scatter([xs[mark_i]], [ys[mark_i]], marker="*", s=320, color="#d62728",
                           zorder=5, label=label)
            else:
                ax.scatter([xs[mark_i]], [ys[mark_i]], s=220, facecolors="none",
                           edgecolors="#d62728", linewidths=2, zorder=5, label=label)
        ax.set_xlabel(name + (" (log scale)" if ax.get_xscale() == "log" else ""),
                      fontsize=11)
        ax.set_ylabel(axis_label(d.metric, d.mode), fontsize=11)
        ax.grid(True, alpha=0.3)
    _legend_below(fig)
    note = f"; {d.skipped} run(s) without {d.metric} left out" if d.skipped else ""
    fig.suptitle(f"{d.version}: {d.metric} of {len(d.runs)} runs against each swept param"
                 f"{note}", fontsize=14)
    return fig


# --- curves -------------------------------------------------------------------------------

@dataclass
class Curves:
    step: str
    metric: str
    lines: dict[str, tuple[list, list]]  # run label -> (steps, values)
    total_runs: int  # runs with two or more points (lines may hold only the newest)


def step_column(columns: list[str], step: str | None) -> str | None:
    if step:
        return step if step in columns else None
    return next((c for c in STEP_COLUMNS if c in columns), None)


def curves_data(db: Path | None, version: str | None, metric: str, step: str | None,
                where: str) -> Curves:
    """Per-step rows of db (of version, if given): one line per run with 2+ points."""
    hint = "log one row per epoch with an epoch (or step) column, or pass --step COLUMN"
    if db is None:
        raise NothingToPlot(f"no results DB {where}", hint="run training first, or pass --db")
    con = sqlite_connect(db, readonly=True)
    try:
        if EVENTS_TABLE not in sqlite_tables(con):
            raise NothingToPlot(f"the results DB {where} has no runs", hint=hint)
        cols = [c[0] for c in sqlite_columns(con, EVENTS_TABLE)]
        col = step_column(cols, step)
        if col is None:
            raise NothingToPlot(f"no step column ({step or ', '.join(STEP_COLUMNS)}) in the "
                                f"results DB {where}", hint=hint)
        if metric not in cols:
            raise NothingToPlot(f"no column {metric!r} in the results DB {where}",
                                hint="pass --metric one of the logged columns")
        q, s, m = quote_ident("track_id"), quote_ident(col), quote_ident(metric)
        v = "version" if version is None and "version" in cols else "NULL"
        sql = (f"SELECT {q}, {s}, {m}, {v} FROM {quote_ident(EVENTS_TABLE)} WHERE {q} IS NOT NULL "
               f"AND {s} IS NOT NULL AND {m} IS NOT NULL")
        binds: list = []
        if version is not None:
            if "version" not in cols:
                raise NothingToPlot(f"the results DB {where} has no version column",
                                    hint="omit --version to chart every run")
            sql += " AND version = ?"
            binds.append(version)
        order = "timestamp, rowid" if "timestamp" in cols else "rowid"
        lines: dict[str, tuple[list, list]] = {}
        for tid, x, y, ver in con.execute(f"{sql} ORDER BY {order}", binds):
            xv, yv = _num(x), _num(y)
            if xv is None or yv is None:
                continue
            label = f"{ver} {tid}" if ver is not None else str(tid)
            xs, ys = lines.setdefault(label, ([], []))
            xs.append(xv)
            ys.append(yv)
    finally:
        con.close()
    lines = {k: v for k, v in lines.items() if len(v[0]) >= 2}
    if not lines:
        of = f" of {version}" if version else ""
        raise NothingToPlot(f"no run{of} logs {metric} at two or more values of {col} "
                            f"({where})", hint=hint)
    total = len(lines)
    keep = list(lines)[-MAX_CURVES:]  # first-seen order: the newest runs last
    return Curves(col, metric, {k: lines[k] for k in keep}, total)


def fig_curves(c: Curves, title: str, mode: str | None = None):
    Figure = require_matplotlib()
    fig = Figure(figsize=(WIDTH_IN, 6.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in c.lines.items():
        order = sorted(range(len(xs)), key=xs.__getitem__)  # a line reads left to right
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", markersize=3,
                linewidth=1.6, label=label)
    if all(float(x).is_integer() for xs, _ in c.lines.values() for x in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5"
    ax.set_xlabel(c.step, fontsize=11)
    ax.set_ylabel(axis_label(c.metric, mode), fontsize=11)
    ax.grid(True, alpha=0.3)
    if len(c.lines) <= 12:
        ax.legend(fontsize=9, title="run", loc="best")
    more = f" (newest {len(c.lines)} of {c.total_runs} runs)" if c.total_runs > len(c.lines) \
        else f" ({len(c.lines)} runs)"
    fig.suptitle(f"{title}: {c.metric} per {c.step}{more}", fontsize=14)
    return fig


# --- what the charts read -----------------------------------------------------------------

def read_ledger_safe(repo: Path, warn=None) -> list[dict]:
    """The production ledger's entries ([] if none); an unreadable one is warned, not fatal:
    a chart of the versions does not need it."""
    from .registry import alias, read_ledger

    try:
        return [e for e in read_ledger(repo, alias(repo)) if isinstance(e, dict)]
    except (EVError, OSError, UnicodeDecodeError) as exc:
        if warn:
            warn(f"production ledger not read ({exc}); versions are charted without marks")
        return []


def history_records(repo: Path, db_rel: str, metric: str | None, mode: str, warn=None
                    ) -> list[dict]:
    """history.version_record of every e-tag (version order), then every exp tag."""
    from . import history

    tags = history.all_tags(repo)
    names = history.e_tags(tags, warn) + history.exp_tags(tags)
    return [history.version_record(repo, tags[n], db_rel, metric, mode, warn) for n in names]


def sweep_for(repo: Path, db_rel: str, version: str, metric: str | None, mode: str, split,
              ledger: list[dict], warn=None) -> SweepData:
    """SweepData of a tag (its rows as committed there) or of a version only logged so far
    (the working-tree results DB: chart a sweep before tagging it)."""
    from . import history

    tags = history.all_tags(repo)
    if version in tags:
        rec = history.version_record(repo, tags[version], db_rel, metric, mode, warn)
        s = rec["_summary"]
        return sweep_data(s.runs, s.version, s.metric, mode, split, ledger, rec["best_run"])
    runs = history.version_runs(repo, db_rel, version, None, warn)
    if not runs:
        raise EVError(f"no tag and no runs logged as {version!r}", code=NOT_FOUND,
                      hint="list versions with experiments.py list")
    s = history.summarize(runs, version, metric, mode)
    return sweep_data(runs, version, s.metric, mode, split, ledger,
                      s.best.track_id if s.best else None)


def curves_for(repo: Path, db_rel: str, version: str | None, metric: str, step: str | None
               ) -> tuple[Curves, str]:
    """Curves of a tag's rows (its DB as committed), or of the working-tree DB."""
    from . import history

    tags = history.all_tags(repo) if version else {}
    rev = version if version in tags else None
    logged = (tags[version].lineage.get("version") or version) if rev else version
    where = f"at {version}" if rev else "in the working tree"
    with history.DBAt(repo, db_rel, rev) as db:
        c = curves_data(db, logged, metric, step, f"{db_rel} {where}")
    return c, (version or "all runs")
