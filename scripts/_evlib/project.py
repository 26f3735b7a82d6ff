"""init_project.py's logic: make any git repository ready for the bundle, idempotently.

Every step is planned first (what would change, and why), then applied; a second run finds
nothing to do. Nothing the user wrote is overwritten: ignore files only get missing lines
appended, an existing settings file is kept (unless --force-settings), an existing remote is
kept (a relative local one is refused, or fixed in the untracked .dvc/config.local).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import settings as settings_mod
from .errors import REFUSED, USAGE, EVError

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MARK = "# added by init_project.py (experiment-versioning bundle)"
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

LINK_TYPES = {
    "copy": "tracked files are copies of the cache objects: writing into one is safe; costs "
            "disk per checkout",
    "reflink": "tracked files are copy-on-write clones: writing into one is safe; free",
    "hardlink": "tracked files ARE the cache objects: never write into one (replace it, or "
                "dvc unprotect first); worktree.py privatize does it for outputs",
    "symlink": "tracked files point into the cache: never write into one (replace it, or dvc "
               "unprotect first); worktree.py privatize does it for outputs",
}


def starter_lines(name: str) -> list[str]:
    text = (ASSETS / name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def missing_lines(path: Path, wanted: list[str]) -> list[str]:
    have = set()
    if path.exists():
        have = {ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace")
                .splitlines()}
    return [ln for ln in wanted if ln not in have]


def merged_text(path: Path, add: list[str]) -> str:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    sep = "\n" if old else ""
    return old + sep + MARK + "\n" + "".join(ln + "\n" for ln in add)


def is_local_url(url: str) -> bool:
    return not _URL_SCHEME.match(url) and not re.match(r"^[\w.-]+@[\w.-]+:", url)


def remotes(repo: Path) -> tuple[str | None, dict[str, str]]:
    """(default remote name, {name: url}) from DVC's config files (no dvc start-up)."""
    import configparser

    default, urls = None, {}
    for name in ("config", "config.local"):
        p = repo / ".dvc" / name
        if not p.exists():
            continue
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(p, encoding="utf-8")
        except configparser.Error as exc:
            raise EVError(f"{p} is not a valid DVC config: {exc}", code=USAGE,
                          hint="fix it with dvc config / dvc remote modify") from exc
        if cp.has_option("core", "remote"):
            default = cp.get("core", "remote")
        for section in cp.sections():
            m = re.match(r"""^'?\s*remote\s+"([^"]+)"\s*'?$""", section)
            if m and cp.has_option(section, "url"):
                urls[m.group(1)] = cp.get(section, "url")
    return default, urls


def cache_type(repo: Path) -> str:
    import configparser

    value = None
    for name in ("config", "config.local"):
        p = repo / ".dvc" / name
        if p.exists():
            cp = configparser.ConfigParser(interpolation=None)
            cp.read(p, encoding="utf-8")
            if cp.has_option("cache", "type"):
                value = cp.get("cache", "type")
    return value or "reflink,copy"


def settings_text(metric: str | None, mode: str, metrics: list[str] | None) -> str:
    import yaml

    def v(x) -> str:
        return yaml.safe_dump(x, default_flow_style=True).strip().removesuffix("...").strip()

    d = settings_mod.Settings()
    return (
        "# Settings of the experiment-versioning bundle; every script reads them, flags "
        "override.\n"
        f"results_db: {v(d.results_db)}  # the xetrack results DB the runs log to\n"
        f"production_model: {v(d.production_model)}  # written only by model_manager.py\n"
        f"candidates_dir: {v(d.candidates_dir)}  # <version>--<run><ext>, one per run\n"
        f"metric: {v(metric)}  # ranks runs (null: scripts ask for --metric)\n"
        f"mode: {v(mode)}  # max: higher is better; min: lower is better\n"
        f"metrics: {v(metrics)}  # metric columns (null: recognised by name); the rest "
        "are params\n"
        f"gto: false  # also write GTO registry tags on promote/rollback\n")


def plan(repo: Path, *, remote: str | None, fix_remote: bool, metric: str | None, mode: str,
         metrics: list[str] | None, force_settings: bool) -> dict:
    """Every change init would make, and the facts it reports. Writes nothing."""
    from .repo import find_repo

    repo = find_repo(repo)
    changes: list[dict] = []
    notes: list[str] = []
    if not (repo / ".dvc").is_dir():
        changes.append({"what": "dvc init", "why": "DVC is not initialised here"})
    # ignore files: only missing lines, appended
    for name, starter, extra in ((".gitignore", "gitignore.starter", ["/.ev/"]),
                                 (".dvcignore", "dvcignore.starter", ["/.ev/"])):
        add = missing_lines(repo / name, list(dict.fromkeys(starter_lines(starter) + extra)))
        if add:
            changes.append({"what": f"append to {name}", "lines": add,
                            "why": "lines the bundle needs that the file lacks (no line of "
                                   "yours is changed)"})
    # remote
    default, urls = remotes(repo) if (repo / ".dvc").is_dir() else (None, {})
    remote_info: dict = {"default": default, "url": urls.get(default) if default else None}
    if remote:
        url = remote
        if is_local_url(url) and not os.path.isabs(os.path.expanduser(url)):
            url = str(Path(os.path.expanduser(url)).resolve())
            notes.append(f"remote {remote} made absolute: {url} (dvc push -T resolves a "
                         f"relative path at older tags against the root of the file system)")
        if default and urls.get(default) == url:
            pass
        elif default and default in urls:
            raise EVError(f"a default remote exists already: {default} = {urls[default]}",
                          code=REFUSED, hint=f"keep it (drop --remote), or change it with: "
                          f"dvc remote modify {default} url {url}")
        else:
            if is_local_url(url) and not Path(url).is_dir():
                changes.append({"what": f"mkdir {url}", "why": "the local remote folder"})
            changes.append({"what": f"dvc remote add -d storage {url}",
                            "why": "no default remote yet"})
            remote_info = {"default": "storage", "url": url}
    elif default and default in urls:
        url = urls[default]
        if is_local_url(url) and not os.path.isabs(os.path.expanduser(url)):
            absolute = str(((repo / ".dvc") / os.path.expanduser(url)).resolve())
            if not fix_remote:
                raise EVError(f"default remote {default} is a relative path ({url}): dvc "
                              f"push -T resolves it at older tags against the root of the "
                              f"file system, so their objects land outside it", code=REFUSED,
                              hint=f"re-run with --fix-remote (sets {absolute} in the "
                                   f"untracked .dvc/config.local), or: dvc remote modify "
                                   f"{default} url {absolute}")
            changes.append({"what": f"dvc remote modify --local {default} url {absolute}",
                            "why": f"{url} is relative (see above); the local config "
                                   f"overrides it on this machine only"})
            remote_info["url"] = absolute
    else:
        notes.append("no default DVC remote: add one with --remote /absolute/path (or an "
                     "s3://bucket/prefix URL) before dvc push")
    # settings
    sp = settings_mod.path(repo)
    if not sp.exists() or force_settings:
        text = settings_text(metric, mode, metrics)
        if not sp.exists() or sp.read_text(encoding="utf-8") != text:
            changes.append({"what": f"write {settings_mod.FILENAME}", "text": text,
                            "why": "the bundle's settings (replaced: --force-settings)"
                                   if sp.exists() else "the bundle's settings"})
    else:
        settings_mod.load(repo)  # a bad file is an error now, not at the first run
        if metric or metrics:
            notes.append(f"{settings_mod.FILENAME} exists: kept as it is (--metric/--metrics "
                         f"ignored; --force-settings rewrites it)")
    # DuckDB's sqlite extension
    duck = duckdb_extension_state()
    if not duck["installed"]:
        changes.append({"what": f"install DuckDB's sqlite extension from {duck['wheel']}",
                        "why": "xetrack's engine='duckdb' and INSTALL sqlite then work "
                               "offline"})
    ctype = cache_type(repo) if (repo / ".dvc").is_dir() else "reflink,copy"
    kinds = [k.strip() for k in ctype.split(",")]
    return {"repo": str(repo), "changes": changes, "notes": notes, "remote": remote_info,
            "cache_type": ctype,
            "cache_type_means": "; ".join(f"{k}: {LINK_TYPES[k]}" for k in kinds
                                          if k in LINK_TYPES),
            "duckdb_sqlite": duck}


def duckdb_extension_state() -> dict:
    from .sql import sqlite_extension_file

    try:
        import duckdb
    except ImportError:
        return {"installed": False, "wheel": None, "error": "duckdb is not installed"}
    con = duckdb.connect()
    try:
        row = con.execute("SELECT installed, install_path FROM duckdb_extensions() "
                          "WHERE extension_name = 'sqlite_scanner'").fetchone()
    finally:
        con.close()
    return {"installed": bool(row and row[0]), "path": row[1] if row else None,
            "wheel": sqlite_extension_file()}


def apply(repo: Path, report: dict) -> None:
    from .atomic import write_text
    from .proc import dvc
    from .sql import ensure_duckdb_sqlite

    repo = Path(report["repo"])
    for ch in report["changes"]:
        what = ch["what"]
        if what == "dvc init":
            dvc(repo, "init", "-q")
        elif what.startswith("append to "):
            name = what[len("append to "):]
            write_text(repo / name, merged_text(repo / name, ch["lines"]))
        elif what.startswith("mkdir "):
            Path(what[len("mkdir "):]).mkdir(parents=True, exist_ok=True)
        elif what.startswith("dvc remote add -d storage "):
            dvc(repo, "remote", "add", "-d", "storage", what[len("dvc remote add -d storage "):])
        elif what.startswith("dvc remote modify --local "):
            _, _, _, _, name, _, url = what.split(" ", 6)
            dvc(repo, "remote", "modify", "--local", name, "url", url)
        elif what.startswith("write "):
            write_text(settings_mod.path(repo), ch["text"])
        elif what.startswith("install DuckDB"):
            ensure_duckdb_sqlite()
