"""CLI conventions shared by every script.

- argparse, with an example and the exit codes in --help;
- --json prints exactly one object with a "status" key on stdout; progress and warnings go to
  stderr;
- every error is one line on stderr ("<script>: error: <what>; <what to do>") and a
  documented exit code; nothing ever prompts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import FAILED, USAGE, EVError, epilog_codes


def _columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (~4 ms of start-up:
    argparse imports it for every formatter it makes, even when no help is printed)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    try:
        lines = int(os.environ["LINES"])
    except (KeyError, ValueError):
        lines = 0
    if columns <= 0 or lines <= 0:
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())
        except (AttributeError, ValueError, OSError):
            size = os.terminal_size((80, 24))
        if columns <= 0:
            columns = size.columns or 80
    return columns


class _Parser(argparse.ArgumentParser):
    last_error: str | None = None  # the usage error's line, for main's --json object

    def _get_formatter(self):  # argparse's own width (terminal columns - 2), see _columns
        return self.formatter_class(prog=self.prog, width=_columns() - 2)

    def error(self, message: str):  # one line, exit 2, like every other usage error
        line = f"{' '.join(message.split())}; see {self.prog} --help"
        _Parser.last_error = line
        self.exit(USAGE, f"{self.prog}: error: {line}\n")


def _json_asked(argv: list[str]) -> bool:
    """--json among the script's own arguments (not in the command after --)."""
    own = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in own


def _print_json_error(code: int, error: str, **data) -> None:
    import json  # on the --json paths only: every start of a script pays for its imports

    print(json.dumps({"status": "error", "code": code, "error": error, **data}, default=str,
                     ensure_ascii=False))


def parser(prog: str, description: str, example: str, *, codes: tuple[int, ...] = (),
           repo: bool = True, dry_run: bool = False, code_notes: dict[int, str] | None = None
           ) -> argparse.ArgumentParser:
    epilog = f"example:\n  {example.strip()}\n\n{epilog_codes(*codes, notes=code_notes)}"
    p = _Parser(prog=prog, description=description, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, repo=repo, dry_run=dry_run)
    return p


def add_common(p: argparse.ArgumentParser, *, repo: bool = True, dry_run: bool = False) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (with a 'status' key) on stdout")
    if repo:
        p.add_argument("--repo", metavar="PATH", default=None,
                       help="the git repository to act on (default: the current one)")
    if dry_run:
        p.add_argument("--dry-run", action="store_true",
                       help="report what would change and write nothing")


def add_sub_common(sp: argparse.ArgumentParser, *, dry_run: bool = False,
                   dry_run_default=False,
                   dry_help: str = "report what would change and write nothing") -> None:
    """--json and --repo (and --dry-run) accepted after a subcommand too.

    SUPPRESS: a value given before the subcommand is not overwritten by the subparser's
    default (`--json --repo X list` and `list --json --repo X` mean the same).
    """
    sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print one JSON object (with a 'status' key) on stdout")
    sp.add_argument("--repo", metavar="PATH", default=argparse.SUPPRESS,
                    help="the git repository to act on (default: the current one)")
    if dry_run:
        sp.add_argument("--dry-run", action="store_true", default=dry_run_default,
                        help=dry_help)


def subparsers(p: argparse.ArgumentParser):
    return p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            parser_class=_Parser)


def warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr)


def progress(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


def emit(args: argparse.Namespace, payload: dict, text: str | Callable[[], str] | None = None
         ) -> None:
    """Print the result: one JSON object with --json, else the text."""
    payload = {"status": payload.pop("status", "ok"), **payload}
    if getattr(args, "json", False):
        import json

        print(json.dumps(payload, default=str, ensure_ascii=False))
    elif text is not None:
        out = text() if callable(text) else text
        if out:
            print(out)


def main(prog: str, build: Callable[[], argparse.ArgumentParser],
         handler: Callable[[argparse.Namespace], int | None],
         argv: list[str] | None = None) -> int:
    """Parse, run handler, map EVError to its one line and exit code. A reader that closed
    stdout (`| head -1`) changes neither (pipe.py)."""
    from . import pipe

    old = pipe.install()
    try:
        return _main(prog, build, handler, argv)
    finally:
        pipe.finish(old)


def _main(prog: str, build: Callable[[], argparse.ArgumentParser],
          handler: Callable[[argparse.Namespace], int | None], argv: list[str] | None) -> int:
    _Parser.last_error = None
    try:
        args = build().parse_args(argv)
    except SystemExit as exc:  # a usage error: with --json its object too (never only text)
        if exc.code == USAGE and _json_asked(list(sys.argv[1:] if argv is None else argv)):
            _print_json_error(USAGE, _Parser.last_error or "usage error")
        raise
    want_json = getattr(args, "json", False)
    try:
        rc = handler(args)
        return int(rc or 0)
    except EVError as exc:
        print(f"{prog}: error: {exc.line()}", file=sys.stderr)
        if want_json:
            _print_json_error(exc.code, exc.line(), **exc.data)
        return exc.code
    except KeyboardInterrupt:
        line = "interrupted; nothing was left half-written, re-run to finish"
        print(f"{prog}: error: {line}", file=sys.stderr)
        if want_json:
            _print_json_error(130, line)
        return 130
    except Exception as exc:  # a bug or an unexpected failure: still one line, never exit 0
        where = os.environ.get("EV_TRACEBACK")
        if where:
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {type(exc).__name__}: {msg}; "
              f"re-run with EV_TRACEBACK=1 for the traceback", file=sys.stderr)
        if want_json:
            _print_json_error(FAILED, f"{type(exc).__name__}: {msg}")
        return FAILED


def resolve_path(p: str | os.PathLike, base: Path | None = None) -> Path:
    """A user path, relative to the current directory (like every CLI), made absolute."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)
