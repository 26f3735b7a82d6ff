"""The exit-code table shared by every script, and the error type that carries a code."""

from __future__ import annotations

OK = 0  # done, result complete
FAILED = 1  # an operation failed (git, dvc, database, file system)
USAGE = 2  # bad arguments or bad input (missing file, wrong format, bad name)
CONFLICT = 3  # inputs disagree (same key, different values); nothing written
REFUSED = 4  # a safety check refused: going on would lose or overwrite work
NOT_FOUND = 5  # the run, version, tag or model asked for does not exist

TABLE = {
    OK: "success",
    FAILED: "an operation failed (git, dvc, database or file system); nothing half-written",
    USAGE: "usage error or bad input; nothing written",
    CONFLICT: "conflicting rows; nothing written (choose with --on-conflict)",
    REFUSED: "refused by a safety check; nothing changed (the message says what to do)",
    NOT_FOUND: "the run, version, tag or file asked for does not exist",
}


def epilog_codes(*codes: int, notes: dict[int, str] | None = None) -> str:
    """The 'exit codes' paragraph of a script's --help (notes: this script's own wording of a
    code, so that it names only flags the script has)."""
    lines = ["exit codes:"]
    for code in sorted({OK, FAILED, USAGE, *codes, *(notes or {})}):
        lines.append(f"  {code}  {(notes or {}).get(code, TABLE[code])}")
    return "\n".join(lines)


def refused_note(*flags: str) -> dict[int, str]:
    """notes= for epilog_codes: the REFUSED line naming the flags this script has."""
    return {REFUSED: f"refused by a safety check; nothing changed (see the message, or "
                     f"{'/'.join(flags)})"}


class EVError(Exception):
    """An error for the user: one line saying what happened and what to do next."""

    def __init__(self, message: str, code: int = FAILED, hint: str | None = None, **data):
        self.message = " ".join(str(message).split())  # always one line
        self.code = code
        self.hint = " ".join(hint.split()) if hint else None
        self.data = data
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message
