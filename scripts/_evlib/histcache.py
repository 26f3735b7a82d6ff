"""The summary cache behind `experiments.py list`: what a past version's tag says, parsed once.

Every key is a content address, so an entry can never go stale, only unused:
- outs[<tag commit>]: the DVC outputs recorded at that commit (a commit's tree cannot change);
- summaries[<results-DB md5>|<version>|<metric>|<mode>]: the version's summary (run count,
  best run, its params and metrics) as computed from that exact DB object.
A re-pointed tag has a new commit, a changed DB a new md5: both miss and are recomputed.
Summaries computed from the working-tree DB (a tag that tracks none) are never stored.

The file is `.dvc/tmp/ev-history.json` (DVC's own untracked scratch folder, per worktree),
replaced atomically; an unreadable or foreign file is ignored and rebuilt. Entries for
commits no tag names any more are dropped when the file is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .dvcmeta import Out

FORMAT = 2  # 2: step and count columns are no params
NAME = "ev-history.json"


class SummaryCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.outs: dict[str, list] = {}
        self.summaries: dict[str, dict] = {}
        self.dirty = False
        self.used: set[str] = set()  # summary keys used this session (kept on prune)

    @classmethod
    def load(cls, repo: Path, enabled: bool = True) -> SummaryCache:
        dvc_dir = Path(repo) / ".dvc"
        c = cls(dvc_dir / "tmp" / NAME if enabled and dvc_dir.is_dir() else None)
        if c.path is None or os.environ.get("EV_HISTORY_CACHE") == "0":
            c.path = None
            return c
        try:
            data = json.loads(c.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return c
        if isinstance(data, dict) and data.get("format") == FORMAT and \
                isinstance(data.get("outs"), dict) and isinstance(data.get("summaries"), dict):
            c.outs, c.summaries = data["outs"], data["summaries"]
        return c

    # --- outs by commit ---
    def get_outs(self, commit: str) -> dict[str, Out] | None:
        rows = self.outs.get(commit)
        if not isinstance(rows, list):
            return None
        try:
            return {r[0]: Out(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows}
        except (IndexError, TypeError, KeyError):
            return None

    def put_outs(self, commit: str, outs: dict[str, Out]) -> None:
        if self.path is None or len(commit) < 40:
            return
        self.outs[commit] = [[o.path, o.md5, o.source, o.legacy] for o in outs.values()]
        self.dirty = True

    # --- summaries by DB content ---
    @staticmethod
    def key(db_md5: str, version: str, metric: str | None, mode: str) -> str:
        """Every input of history.summarize besides the DB's content. (A change to how a
        summary is computed bumps FORMAT.)"""
        return json.dumps([db_md5, version, metric, mode])

    def get_summary(self, key: str) -> dict | None:
        got = self.summaries.get(key)
        if isinstance(got, dict):
            self.used.add(key)
            return got
        return None

    def put_summary(self, key: str, payload: dict) -> None:
        if self.path is None:
            return
        try:
            json.dumps(payload, allow_nan=True)
        except (TypeError, ValueError):
            return  # a value JSON cannot hold exactly (a BLOB): recompute it each time
        self.summaries[key] = payload
        self.used.add(key)
        self.dirty = True

    def save(self, live_commits: set[str] | None = None) -> None:
        """Write the file (atomically) if anything was added. Given every tag's commit: drop
        entries of other commits, and summaries of DBs no kept commit records (unless used
        just now)."""
        if self.path is None or not self.dirty:
            return
        outs = {c: v for c, v in self.outs.items()
                if live_commits is None or c in live_commits}
        md5s = {r[1] for rows in outs.values() if isinstance(rows, list) for r in rows
                if isinstance(r, list) and len(r) > 1}
        summaries = {}
        for k, v in self.summaries.items():
            try:
                db_md5 = json.loads(k)[0]
            except (ValueError, IndexError, TypeError):
                continue
            if k in self.used or db_md5 in md5s:
                summaries[k] = v
        text = json.dumps({"format": FORMAT, "outs": outs, "summaries": summaries},
                          separators=(",", ":"))
        from .atomic import write_text

        try:
            write_text(self.path, text)
        except OSError:
            pass  # a cache: failing to write it only costs the next list its speed-up
