"""The one place that reads DVC's own files: `.dvc` files, `dvc.lock`, the cache's location
(from .dvc/config and config.local) and the object layout. Reading them directly costs
microseconds where a `dvc` call costs ~0.4 s, and works at any git revision.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Out:
    path: str  # repo-relative, "/"-separated
    md5: str  # DVC md5 ("....dir" for a directory)
    source: str  # the .dvc file or dvc.lock that records it (repo-relative)
    legacy: bool = False  # DVC 2 layout (cache/xx/rest) rather than cache/files/md5/xx/rest

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")

    @property
    def short(self) -> str:
        return self.md5.replace(".dir", "")[:6]


def load_yaml(text: str | None) -> dict:
    import yaml

    try:  # libyaml's loader when built with it: ~10x faster on many small .dvc files
        data = yaml.load(text or "", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def is_meta_file(path: str) -> bool:
    """A .dvc file or a dvc.lock (not DVC's own .dvc/ folder)."""
    return (path.endswith(".dvc") and not path.startswith(".dvc/")) or \
        os.path.basename(path) == "dvc.lock"


def parse_outs(text: str | None, source: str) -> list[Out]:
    """Outputs recorded in a .dvc file or dvc.lock; paths made relative to the repo root."""
    doc = load_yaml(text)
    if os.path.basename(source) == "dvc.lock":
        entries = [o for st in (doc.get("stages") or {}).values() for o in
                   ((st or {}).get("outs") or [])]
    else:
        entries = doc.get("outs") or []
    base = os.path.dirname(source)
    outs = []
    for o in entries:
        if isinstance(o, dict) and o.get("path") and o.get("md5"):
            p = os.path.normpath(os.path.join(base, str(o["path"]))).replace(os.sep, "/")
            outs.append(Out(p, str(o["md5"]), source, legacy=o.get("hash") != "md5"))
    return outs


def first_md5(text: str | None) -> str | None:
    """The md5 of the single output of a .dvc file's text (None if absent)."""
    outs = load_yaml(text).get("outs") or []
    return outs[0].get("md5") if outs and isinstance(outs[0], dict) else None


def cache_dir(repo: Path) -> Path:
    """`[cache] dir` from .dvc/config, overridden by .dvc/config.local; default .dvc/cache.

    Relative dirs are relative to .dvc/ (where the config lives), as DVC reads them. Global and
    system configs are not read: set the cache with `dvc cache dir --local` (worktree.py does).
    """
    found = repo / ".dvc" / "cache"
    for name in ("config", "config.local"):
        cfg = repo / ".dvc" / name
        if not cfg.is_file():
            continue
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            cp.read_string(cfg.read_text())
        except (configparser.Error, OSError):
            continue
        if cp.has_option("cache", "dir"):
            d = Path(os.path.expanduser(cp.get("cache", "dir").strip().strip("'\"")))
            found = d if d.is_absolute() else repo / ".dvc" / d
    return found.resolve()


def object_path(root: Path, md5: str, legacy: bool = False) -> Path:
    """Where a cache or a local-directory remote keeps object md5."""
    base = root if legacy else root / "files" / "md5"
    return base / md5[:2] / md5[2:]


def find_object(cache: Path, md5: str) -> Path | None:
    """The object's file in the cache, in either layout, if present."""
    for legacy in (False, True):
        p = object_path(cache, md5, legacy)
        if p.is_file():
            return p
    return None
