"""A version's summary from its runs: which column ranks them, the best run, its params and
metrics (what `experiments.py list` prints per version, show and compare in full).

Pure computation over runs.Run values; small on purpose: listcold (a first `list`) imports
it without the rest of history.
"""

from __future__ import annotations

from .errors import USAGE, EVError
from .plain import plain
from .settings import META_COLS, is_metric_name, is_step

TYPE_CHECKING = False  # typing's own import costs a few ms of a fresh list
if TYPE_CHECKING:
    from .runs import Run


def run_params(r: Run, metric_cols: set[str]) -> dict:
    """Metrics here are recognised by name (metric_columns): step and count columns are
    then no params either (settings.is_step), as in Settings.split."""
    return {k: v for k, v in r.values.items() if k not in META_COLS and k not in metric_cols
            and not is_step(k, v)}


def run_metrics(r: Run, metric_cols: set[str]) -> dict:
    return {k: v for k, v in r.values.items() if k in metric_cols}


def is_metric(col: str, extra: str | None = None) -> bool:
    return col == extra or is_metric_name(col.lower())


def metric_columns(runs: list[Run], metric: str | None) -> set[str]:
    numeric = {k for r in runs for k, v in r.values.items()
               if k not in META_COLS and _num(v) is not None}
    cols = {k for k in numeric if is_metric(k, metric)}  # each name asked once
    if metric:
        cols.add(metric)
    return cols


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN (math.isnan, without importing math)


def choose_metric(runs: list[Run], metric: str | None) -> str:
    if metric:
        return metric
    cols = sorted(k for k in {k for r in runs for k in r.values}
                  if k not in META_COLS and is_metric(k))
    if "f1_score" in cols or not cols:
        return "f1_score"
    return cols[0]


def best_run(runs: list[Run], metric: str, mode: str, version: str) -> Run:
    scored = [r for r in runs if _num(r.values.get(metric)) is not None]
    if not scored:
        present = sorted({k for r in runs for k in r.values if k not in META_COLS})
        raise EVError(f"no run of {version} has a numeric {metric!r}", code=USAGE,
                      hint=f"pass --metric one of: {', '.join(present) or '(no columns)'}")
    from .runs import rank

    return rank(scored, metric, mode, value_of=lambda r: _num(r.values[metric]))[0]


def fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}" if v == v else "nan"
    return str(v)


@plain
class VersionSummary:
    version: str
    runs: list[Run]
    metric: str
    mode: str
    best: Run | None
    metric_cols: set[str]

    def payload(self) -> dict:
        b = self.best
        return {
            "version": self.version, "runs": len(self.runs), "metric": self.metric,
            "mode": self.mode, "best_run": b.track_id if b else None,
            "model": b.model if b else None,
            "value": b.values.get(self.metric) if b else None,
            "params": run_params(b, self.metric_cols) if b else {},
            "metrics": run_metrics(b, self.metric_cols) if b else {},
        }


def summarize(runs: list[Run], version: str, metric: str | None, mode: str) -> VersionSummary:
    m = choose_metric(runs, metric)
    cols = metric_columns(runs, m)
    best = None
    if runs and any(_num(r.values.get(m)) is not None for r in runs):
        best = best_run(runs, m, mode, version)
    return VersionSummary(version, runs, m, mode, best, cols)


def list_text(rows: list[dict], kind: str = "e") -> str:
    """`experiments.py list`'s text: one line per version record (listcold's too)."""
    if not rows:
        what = {"e": "experiment tags (e<major>.<minor>.<patch>)",
                "exp": "worktree tags (exp-NAME-vN)", "all": "experiment tags"}[kind]
        return f"no {what} yet"
    lines = []
    width = max(10, *(len(r["tag"]) for r in rows))
    for r in rows:
        metric = f"{r['metric']}={fmt(r['value'])}" if r["value"] is not None \
            else f"{r['metric']}=-"
        lines.append(f"{r['tag']:<{width}} {r['date'][:10]}  {r['model'] or '-':<10} {metric:<18}"
                     f" runs={r['runs']:<3} data={r['data']}  {r['description']}")
    return "\n".join(lines)
