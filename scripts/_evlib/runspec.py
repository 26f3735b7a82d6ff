"""What a run is: its spec (RunSpec: the command, its outputs, its environment) and its result
(RunResult). Split out of runner.py; `runner.RunSpec` and `runner.RunResult` stay."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .errors import FAILED


@dataclass
class RunSpec:
    command: list[str]  # final argv (placeholders already filled in)
    version: str
    key: str  # the run key (ev_run): a sweep's hash of params, or run.py's own id
    params: dict = field(default_factory=dict)  # recorded as ev_params
    results_db: str = "results/experiments.db"  # repo-relative: where the command logs
    model_outputs: list[str] = field(default_factory=list)  # repo-relative model paths
    require_models: bool = True  # a model output the command did not write is an error
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES for this run (None: not set)
    cwd: str = "."  # repo-relative directory the command starts in
    env: dict = field(default_factory=dict)  # extra environment
    export_params: bool = True  # set EV_PARAMS (a sweep's values); run.py's are only recorded
    protect: list[str] = field(default_factory=list)  # also private, never collected (the
    # production model: a script that writes it writes its own copy, which is dropped)
    candidates_dir: str = ""  # a real folder in the sandbox (never a link to the project's):
    # a file the command writes there is one of the run's models, collected only if it is good

    @property
    def private(self) -> list[str]:
        return list(dict.fromkeys([self.results_db, *self.model_outputs, *self.protect]))

    @property
    def real_dir(self) -> str:
        """The candidates folder, unless it is (inside) a private output already. (A pure
        function of four fields, asked for several times per run on a sweep's hot path:
        computed once per value.)"""
        try:
            k = (self.candidates_dir, self.results_db, tuple(self.model_outputs),
                 tuple(self.protect))
            got = _REAL_DIRS.get(k)
        except TypeError:  # (an unhashable value)
            return self._real_dir()
        if got is None:
            got = self._real_dir()
            if len(_REAL_DIRS) < 256:
                _REAL_DIRS[k] = got
        return got

    def _real_dir(self) -> str:
        c = os.path.normpath(self.candidates_dir).replace(os.sep, "/") if self.candidates_dir \
            else ""
        if not c or any(c == q or c.startswith(q + "/") for q in
                        (os.path.normpath(p).replace(os.sep, "/") for p in self.private)):
            return ""
        return c

    def to_dict(self) -> dict:
        # By hand, not dataclasses.asdict (a deep copy through every value): it is written
        # into each run's state, on a sweep's hot path. Fields are JSON-like already.
        return {f: getattr(self, f) for f in _SPEC_FIELDS}


_SPEC_FIELDS = tuple(RunSpec.__dataclass_fields__)
_REAL_DIRS: dict = {}  # (candidates_dir, results_db, model_outputs, protect) -> real_dir


@dataclass
class RunResult:
    spec: RunSpec
    workdir: str
    exit_code: int | None = None
    error: str | None = None  # one line; None when the run is good
    error_code: int = FAILED  # the exit code that error maps to (USAGE: bad input)
    shard: str | None = None  # the run's results DB, lineage stamped (inside workdir)
    rows: int = 0
    track_ids: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # output path -> file in workdir
    log: str | None = None
    seconds: float = 0.0
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d
