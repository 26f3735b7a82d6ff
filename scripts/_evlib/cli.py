"""CLI conventions shared by every script.

- argparse, with an example and the exit codes in --help;
- --json prints exactly one object with a "status" key on stdout; progress and warnings go to
  stderr;
- every error is one line on stderr ("<script>: error: <what>; <what to do>") and a
  documented exit code; nothing ever prompts.

argparse is imported when a parser is built (a script given `quick=` options may answer a
plain command line without it: quick_parse).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import FAILED, USAGE, EVError, epilog_codes

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a start)
if TYPE_CHECKING:
    import argparse

# The usage error's line, for main's --json object (set by the parser's error()).
_LAST_ERROR: list[str | None] = [None]
_PARSER_CLASS: list[type] = []


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


def _parser_class() -> type:
    """The ArgumentParser every script uses (made on first use: argparse is imported then)."""
    if _PARSER_CLASS:
        return _PARSER_CLASS[0]
    import argparse

    class _Parser(argparse.ArgumentParser):
        def _get_formatter(self):  # argparse's own width (terminal columns - 2), see _columns
            return self.formatter_class(prog=self.prog, width=_columns() - 2)

        def error(self, message: str):  # one line, exit 2, like every other usage error
            line = f"{' '.join(message.split())}; see {self.prog} --help"
            _LAST_ERROR[0] = line
            self.exit(USAGE, f"{self.prog}: error: {line}\n")

    _PARSER_CLASS.append(_Parser)
    return _Parser


def _json_asked(argv: list[str]) -> bool:
    """--json among the script's own arguments (not in the command after --)."""
    own = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in own


def interrupted(prog: str, want_json: bool) -> int:
    """Ctrl-C: one line (and its JSON object), exit 130, never a traceback."""
    line = "interrupted; nothing was left half-written, re-run to finish"
    print(f"{prog}: error: {line}", file=sys.stderr)
    if want_json:
        _print_json_error(130, line)
    return 130


def _print_json_error(code: int, error: str, **data) -> None:
    import json  # on the --json paths only: every start of a script pays for its imports

    print(json.dumps({"status": "error", "code": code, "error": error, **data}, default=str,
                     ensure_ascii=False))


def parser(prog: str, description: str, example: str, *, codes: tuple[int, ...] = (),
           repo: bool = True, dry_run: bool = False, code_notes: dict[int, str] | None = None
           ) -> argparse.ArgumentParser:
    import argparse

    epilog = f"example:\n  {example.strip()}\n\n{epilog_codes(*codes, notes=code_notes)}"
    p = _parser_class()(prog=prog, description=description, epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, repo=repo, dry_run=dry_run)
    return p


def common_options(*, repo: bool = True, dry_run: bool = False) -> list[tuple[str, dict]]:
    """add_common's options as (flag, add_argument keywords), for quick_parse too."""
    opts = [("--json", {"action": "store_true",
                        "help": "print one JSON object (with a 'status' key) on stdout"})]
    if repo:
        opts.append(("--repo", {"metavar": "PATH", "default": None,
                                "help": "the git repository to act on (default: the current "
                                        "one)"}))
    if dry_run:
        opts.append(("--dry-run", {"action": "store_true",
                                   "help": "report what would change and write nothing"}))
    return opts


def add_options(p: argparse.ArgumentParser, options: list[tuple[str, dict]]) -> None:
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)


def add_common(p: argparse.ArgumentParser, *, repo: bool = True, dry_run: bool = False) -> None:
    add_options(p, common_options(repo=repo, dry_run=dry_run))


class QuickArgs:
    """quick_parse's answer: the attributes argparse's Namespace would have."""

    def __init__(self, values: dict):
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"QuickArgs({self.__dict__!r})"


_QUICK_KEYS = {"action", "nargs", "choices", "default", "help", "metavar"}


def quick_parse(argv: list[str], options: list[tuple[str, dict]]) -> QuickArgs | None:
    """What parse_args would return for argv, for the plain command lines only; None for
    anything else (argparse then parses it, and prints help or its error as always).

    options: every option of a parser with no positionals, as (long flag, add_argument
    keywords), using only store / store_true / append, nargs None or '+', choices and
    defaults. Plain: each option spelled out exactly (no abbreviation, no --opt=value, no
    -h), each value a word that does not start with '-', the right number of them, each in
    its choices. Then argparse's answer is known: a store takes the one value after its
    flag, nargs '+' every value up to the next flag, store_true none, append adds one to a
    copy; a later flag replaces an earlier one's value. Anything else (a value starting
    with '-', '--', a missing value, a stray word, a bad choice) is argparse's to decide.
    """
    spec: dict[str, tuple[str, str, object, object]] = {}
    values: dict[str, object] = {}
    for flag, kw in options:
        action = kw.get("action", "store")
        nargs = kw.get("nargs")
        if (not flag.startswith("--") or set(kw) - _QUICK_KEYS
                or action not in ("store", "store_true", "append")
                or nargs not in (None, "+") or (action != "store" and nargs is not None)):
            return None  # not a kind of option this knows argparse's answer for
        dest = flag[2:].replace("-", "_")
        spec[flag] = (dest, action, nargs, kw.get("choices"))
        values[dest] = kw.get("default", False if action == "store_true" else None)
    i, n = 0, len(argv)
    while i < n:
        s = spec.get(argv[i])
        if s is None:
            return None
        dest, action, nargs, choices = s
        i += 1
        if action == "store_true":
            values[dest] = True
            continue
        j = i
        while j < n and not argv[j].startswith("-"):
            j += 1
        given = argv[i:j]
        if not given or (nargs is None and len(given) > 1):
            return None
        if choices is not None and any(v not in choices for v in given):
            return None
        if action == "append":
            values[dest] = [*(values[dest] or []), given[0]]
        else:
            values[dest] = given[0] if nargs is None else given
        i = j
    return QuickArgs(values)


def add_sub_common(sp: argparse.ArgumentParser, *, dry_run: bool = False,
                   dry_run_default=False,
                   dry_help: str = "report what would change and write nothing") -> None:
    """--json and --repo (and --dry-run) accepted after a subcommand too.

    SUPPRESS: a value given before the subcommand is not overwritten by the subparser's
    default (`--json --repo X list` and `list --json --repo X` mean the same).
    """
    import argparse

    sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print one JSON object (with a 'status' key) on stdout")
    sp.add_argument("--repo", metavar="PATH", default=argparse.SUPPRESS,
                    help="the git repository to act on (default: the current one)")
    if dry_run:
        sp.add_argument("--dry-run", action="store_true", default=dry_run_default,
                        help=dry_help)


def subparsers(p: argparse.ArgumentParser):
    return p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            parser_class=_parser_class())


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
         argv: list[str] | None = None,
         quick: list[tuple[str, dict]] | None = None) -> int:
    """Parse, run handler, map EVError to its one line and exit code. A reader that closed
    stdout (`| head -1`) changes neither (pipe.py).

    quick: the parser's options (see quick_parse): a plain command line is parsed without
    building the parser (or importing argparse); anything else goes to build()'s parser."""
    from . import pipe

    old = pipe.install()
    try:
        return _main(prog, build, handler, argv, quick)
    finally:
        pipe.finish(old)


def _main(prog: str, build: Callable[[], argparse.ArgumentParser],
          handler: Callable[[argparse.Namespace], int | None], argv: list[str] | None,
          quick: list[tuple[str, dict]] | None) -> int:
    _LAST_ERROR[0] = None
    args = quick_parse(sys.argv[1:] if argv is None else argv, quick) if quick else None
    if args is None:
        try:
            args = build().parse_args(argv)
        except SystemExit as exc:  # a usage error: with --json its object too (never only text)
            if exc.code == USAGE and _json_asked(list(sys.argv[1:] if argv is None else argv)):
                _print_json_error(USAGE, _LAST_ERROR[0] or "usage error")
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
        return interrupted(prog, want_json)
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


def exit_now(rc: int) -> None:
    """sys.exit(rc) without the interpreter's teardown (freeing every module and object:
    ~4 ms of a 30 ms merge, none of it needed by a script that has finished). Output is
    flushed and atexit callbacks run first, as at a normal exit; when that cannot be done
    (a flush fails, another thread is still running), it is a normal exit."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(rc)  # a normal exit waits for non-daemon threads
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        sys.exit(rc)  # the normal exit reports the failed flush (exit 120)
    import atexit

    atexit._run_exitfuncs()  # run (and cleared): a normal exit would not run them again
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        sys.exit(rc)
    os._exit(rc)
