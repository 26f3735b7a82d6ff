"""Collecting a good run's files: its model files become candidates, the other files it
created go into the repository (or a spill folder). Split out of runner.py (re-exported)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import guard
from .errors import FAILED, EVError
from .runspec import RunResult
from .sandbox import extras, resolved


def candidate_names(result: RunResult) -> dict[str, str]:
    """{output path: candidate file name} for the run's model files."""
    spec = result.spec
    if not result.models:
        return {}
    tid = result.track_ids[0]
    many = len(spec.model_outputs) > 1
    out = {}
    for p in result.models:
        name = os.path.basename(p.rstrip("/"))
        if p not in spec.model_outputs:  # its own file in the candidates folder: name kept
            own = f"{spec.version}--{tid}"  # (already named after the run: as it is)
            out[p] = name if name == own or name.startswith(own + ".") else f"{own}.{name}"
            continue
        stem, dot, ext = name.partition(".")
        suffix = (f".{stem}" if many else "") + (f".{ext}" if dot else "")
        out[p] = f"{spec.version}--{tid}{suffix}"
    return out


def collect_models(result: RunResult, candidates_dir: Path, names: dict | None = None
                   ) -> dict[str, str]:
    """Move the run's model files into candidates_dir (idempotent). {output: candidate}."""
    import filecmp

    names = names or candidate_names(result)
    candidates_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for p, name in names.items():
        src, dest = Path(result.models[p]), candidates_dir / name
        if src.exists():
            if dest.exists():
                same = src.is_file() and dest.is_file() and filecmp.cmp(src, dest, False)
                if not same:
                    raise EVError(f"candidate {dest} exists already with other content",
                                  code=FAILED, hint="move it aside, then re-run")
            else:
                try:
                    os.replace(src, dest)  # same file system: a rename, no copy
                except OSError:
                    import shutil
                    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
                    (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
                    os.replace(tmp, dest)
        elif not dest.exists():
            raise EVError(f"model file {src} is gone and {dest} does not exist", code=FAILED)
        done[p] = str(dest)
    return done


_EXTRAS_LOCK = threading.Lock()


def collect_extras(result: RunResult, repo: Path, spill: Path | None) -> dict:
    """Move the run's extra files into the repository where nothing is there yet (folders
    are merged); the others (another run wrote the same path) go under spill/."""
    moved, kept = [], []
    tree = Path(result.workdir) / "tree"

    def put(src: Path, rel: str) -> None:
        dest = Path(repo) / rel
        if src.is_dir() and not src.is_symlink() and dest.is_dir() and not dest.is_symlink():
            for child in sorted(os.listdir(src)):
                put(src / child, f"{rel}/{child}")
        elif not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            moved.append(rel)
        elif spill is not None:
            (spill / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, spill / rel)
            kept.append(str(spill / rel))

    with _EXTRAS_LOCK:
        for rel in extras(result):
            put(tree / rel, rel)
        guard.MOVED.setdefault(str(resolved(repo)), set()).update(moved)
    return {"moved": moved, "kept": kept}
