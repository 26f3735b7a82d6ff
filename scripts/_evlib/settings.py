"""The project's settings file (`ev.yaml` at the repository root), read by every script.

One definition of what the bundle needs to know about a project, so that ranking, the
ledger, status, tags, list and compare agree: where the results DB and the production model
live, which column ranks runs and in which direction, and which columns are metrics (the
rest of a run's columns are params, or lineage the bundle itself records). A flag given on
the command line overrides the file; a missing file means the defaults below.

`init_project.py` writes the file; nothing else does.
"""

from __future__ import annotations

import os

from .errors import USAGE, EVError
from .plain import factory, fields, plain

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pathlib import Path

FILENAME = "ev.yaml"

# Columns xetrack writes about the call itself: never params, never metrics.
XETRACK_COLS = frozenset({"track_id", "timestamp", "function_name", "args", "kwargs", "error",
                          "function_time"})
# Lineage columns (the bundle's own, or logged by the template): who/what/where of a run.
LINEAGE_COLS = frozenset({"version", "git_commit", "git_dirty", "data_hash", "model_path",
                          "ev_run", "ev_command", "ev_commit", "ev_dirty", "ev_data_md5",
                          "ev_params", "ev_gpus", "ev_worker", "ev_seconds"})
META_COLS = XETRACK_COLS | LINEAGE_COLS
# Used only when the settings file names no metrics: columns named like a metric
# (METRIC_RE.search, which is_metric_name reads without `re`: ~17 ms of a first list).
METRIC_WORDS = ("f1", "f1_score", "precision", "prec", "recall", "accuracy", "acc", "auc",
                "roc_auc", "loss", "mse", "rmse", "mae", "r2", "score", "map", "ndcg", "bleu",
                "perplexity", "error_rate", "wer", "cer", "iou", "dice")  # and rouge\w*
# Recognised by name the same way: a numeric column named like a step counter or a count
# of what a run read (the epoch of a row, n_rows) is never a param (a metric only when the
# settings file names it one); a change of it is no change of configuration. Whole names
# only: epochs, max_steps, n_estimators or num_layers are settings of a run, so params.
STEP_WORDS = frozenset({"epoch", "step", "global_step", "iteration", "iter", "rows",
                        "examples", "count"})
STEP_COUNTED = frozenset({"rows", "samples", "examples", "records", "items", "tokens"})
# The same languages as regexes (compiled on first use); test_namematch checks that both
# forms accept the same names.
_PATTERNS = {
    "METRIC_RE": r"(^|_)(f1|f1_score|precision|prec|recall|accuracy|acc|auc|roc_auc|"
                 r"loss|mse|rmse|mae|r2|score|map|ndcg|bleu|rouge\w*|perplexity|"
                 r"error_rate|wer|cer|iou|dice)($|_)",
    "STEP_RE": r"epoch|step|global_step|iteration|iter|rows|examples|count|"
               r"(n|num)_(rows|samples|examples|records|items|tokens)|\w+_count",
}


def __getattr__(name: str):
    if name in _PATTERNS:
        import re

        globals()[name] = got = re.compile(_PATTERNS[name])
        return got
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"  # \w on a str: sre's Py_UNICODE_ISALNUM or "_"


_METRIC_MEMO: dict[str, bool] = {}  # a DB has few column names, each asked of every run


def is_metric_name(name: str) -> bool:
    """bool(METRIC_RE.search(name)): a word starting at 0 or after a "_", ending at the end,
    before one final newline (`$`), or at a "_"."""
    got = _METRIC_MEMO.get(name)
    if got is None:
        if len(_METRIC_MEMO) > 4096:
            _METRIC_MEMO.clear()
        got = _METRIC_MEMO[name] = _metric_name(name)
    return got


def _metric_name(name: str) -> bool:
    n = len(name)

    def ends(e: int) -> bool:
        return e == n or name[e] == "_" or (e == n - 1 and name[e] == "\n")

    q = 0
    while True:
        for w in METRIC_WORDS:
            if name.startswith(w, q) and ends(q + len(w)):
                return True
        if name.startswith("rouge", q):  # rouge\w*: a run of word characters, backtracked
            k = q + 5
            while k < n and _word(name[k]):
                k += 1
            if ends(k) or "_" in name[q + 5:k]:
                return True
        q = name.find("_", q) + 1
        if q == 0:
            return False


def is_step_name(name: str) -> bool:
    """bool(STEP_RE.fullmatch(name))."""
    if name in STEP_WORDS:
        return True
    head, sep, tail = name.partition("_")
    if sep and head in ("n", "num") and tail in STEP_COUNTED:
        return True
    return len(name) > 6 and name.endswith("_count") and all(_word(c) for c in name[:-6])


def is_step(column: str, value) -> bool:
    """A numeric step or count column (STEP_RE), by its name and its value."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        is_step_name(column.lower())


@plain
class Settings:
    results_db: str = "results/experiments.db"
    production_model: str = "models/production/model.bin"
    candidates_dir: str = "models/candidates"
    metric: str | None = None  # the ranking metric (None: scripts ask for --metric)
    mode: str = "max"  # max: higher is better; min: lower is better
    metrics: list[str] | None = None  # metric columns; None: recognised by name (METRIC_RE)
    gto: bool = False  # also write GTO registry tags on promote/rollback
    extra: dict = factory(dict)  # keys this version does not know, kept as is

    def is_metric(self, column: str) -> bool:
        if column in META_COLS:
            return False
        if column == self.metric:
            return True
        if self.metrics is not None:
            return column in self.metrics
        return is_metric_name(column.lower())

    def is_param(self, column: str) -> bool:
        return column not in META_COLS and not self.is_metric(column)

    def split(self, values: dict) -> tuple[dict, dict]:
        """(params, metrics) of a run's values; lineage and xetrack columns in neither, step
        and count columns (is_step) in metrics only when named there."""
        params = {k: v for k, v in values.items() if self.is_param(k) and not is_step(k, v)}
        metrics = {k: v for k, v in values.items() if self.is_metric(k)}
        return params, metrics

    def to_dict(self) -> dict:
        import copy

        # what dataclasses.asdict gave: every value a deep copy
        d = {n: copy.deepcopy(getattr(self, n)) for n in fields(Settings)}
        extra = d.pop("extra")
        return {**d, **extra}


_KNOWN = set(fields(Settings)) - {"extra"}


def path(repo: str | os.PathLike) -> Path:
    from pathlib import Path  # ~5 ms of a first list, which never needs it

    return Path(repo) / FILENAME


def load(repo: str | os.PathLike) -> Settings:
    """The project's settings (defaults when there is no file). Bad content: exit 2."""
    from pathlib import Path

    import yaml

    p = path(repo)
    if not p.exists():
        return Settings()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise EVError(f"{p}{where} is not valid YAML", code=USAGE,
                      hint="fix it, or re-create it with init_project.py --force-settings"
                      ) from exc
    if not isinstance(data, dict):
        raise EVError(f"{p} must hold a mapping (key: value lines)", code=USAGE,
                      hint="re-create it with init_project.py --force-settings")
    known = {k: v for k, v in data.items() if k in _KNOWN}
    extra = {k: v for k, v in data.items() if k not in _KNOWN}
    s = Settings(**known, extra=extra)
    if s.mode not in ("max", "min"):
        raise EVError(f"{p}: mode must be max or min, not {s.mode!r}", code=USAGE,
                      hint="edit mode: in the settings file")
    if s.metrics is not None and not (isinstance(s.metrics, list)
                                      and all(isinstance(m, str) for m in s.metrics)):
        raise EVError(f"{p}: metrics must be a list of column names", code=USAGE,
                      hint="write e.g. metrics: [f1_score, accuracy]")
    for key in ("results_db", "production_model", "candidates_dir"):
        v = getattr(s, key)
        if not isinstance(v, str) or Path(v).is_absolute() or ".." in Path(v).parts:
            raise EVError(f"{p}: {key} must be a path inside the repository, not {v!r}",
                          code=USAGE, hint=f"edit {key}: in the settings file")
    return s
