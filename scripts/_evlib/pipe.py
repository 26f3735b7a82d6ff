"""stdout whose reader went away (`script.py ... | head -1`): the rest of the output is
dropped, never an error. The command goes on and exits with what it did: a tag created, a
model promoted or a sweep run is no failure because nobody read its last lines (and the
interpreter's own final flush prints no "Exception ignored ... BrokenPipeError").

Only os and sys: experiments.py's fast path (listfast) uses it before anything else loads.
"""

from __future__ import annotations

import os
import sys


def _gone(f) -> None:
    """The reader closed the pipe: fd 1 becomes /dev/null, so whatever is still buffered,
    and every later write, goes there quietly."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(fd, f.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(fd)


class QuietStdout:
    """sys.stdout, with a broken pipe swallowed on write and flush."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, s: str) -> int:
        try:
            return self._f.write(s)
        except BrokenPipeError:
            _gone(self._f)
            return len(s)

    def flush(self) -> None:
        try:
            self._f.flush()
        except BrokenPipeError:
            _gone(self._f)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def install():
    """Wrap sys.stdout (once); returns what to restore with finish()."""
    old = sys.stdout
    if old is not None and not isinstance(old, QuietStdout):
        sys.stdout = QuietStdout(old)
    return old


def finish(old) -> None:
    """Flush what the command printed (a closed pipe is no error), put sys.stdout back."""
    out = sys.stdout
    if out is not None:
        try:
            out.flush()
        except BrokenPipeError:
            _gone(out)
        except (OSError, ValueError):
            pass
    sys.stdout = old


def exit_now() -> None:
    """Exit 0 at once, without the interpreter's teardown (module and object clean-up: ~4 ms
    of a ~45 ms first list), when there is nothing left that teardown would do that anyone
    could see: stdout and stderr flushed, no atexit callback (coverage, logging...), no
    other thread, not `python -i`. Otherwise it returns: the caller's sys.exit(0) does it
    all, as before. For a command whose work is done (its files closed, its children
    waited for)."""
    import atexit

    count = getattr(atexit, "_ncallbacks", None)
    if count is None or count() or sys.flags.inspect:
        return
    thr = sys.modules.get("threading")
    if thr is not None and thr.active_count() > 1:
        return
    try:
        for f in (sys.stdout, sys.stderr):
            if f is not None:
                f.flush()
    except Exception:  # noqa: BLE001 - the ordinary exit reports it, as before
        return
    os._exit(0)
