"""cli.quick_parse: argparse's own answer for a plain command line, or None (argparse decides)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import random
import sys

from conftest import SCRIPTS

sys.path.insert(0, str(SCRIPTS))

from _evlib import cli, merge_cli  # noqa: E402

FLAGS = [flag for flag, _kw in merge_cli.quick_options()]
WORDS = ["a.db", "b.db", "merge", "rebase", "keep-exp", "keep-base", "", "x y", "-1", "-",
         "--", "--base", "--json=1", "-h", "--exp-db=a.db", "- z"]


def _argparse(argv: list[str]):
    """vars() of parse_args, or None when argparse exits (an error or --help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(merge_cli.build("doc").parse_args(argv))
        except SystemExit:
            return None


def _check(argv: list[str]) -> bool:
    quick = cli.quick_parse(argv, merge_cli.quick_options())
    if quick is None:
        return False
    assert vars(quick) == _argparse(argv), argv
    return True


def test_quick_parse_is_argparses_answer_or_none():
    tokens = FLAGS + WORDS
    answered = 0
    for argv in itertools.chain([[]], ([t] for t in tokens),
                                itertools.product(tokens, repeat=2)):
        answered += _check(list(argv))
    rng = random.Random(18)
    for _ in range(3000):
        answered += _check([rng.choice(tokens) for _ in range(rng.randint(3, 9))])
    assert answered > 100  # the plain lines are answered, not all left to argparse


def test_quick_parse_answers_a_plain_merge_and_leaves_the_rest_to_argparse():
    opts = merge_cli.quick_options()
    argv = ["--repo", "r", "--base-db", "b.db", "--exp-db", "e1.db", "e2.db", "--json",
            "--table", "default", "--table", "keys", "--strategy", "rebase",
            "--key-columns", "track_id", "--exp-db", "e3.db"]
    got = vars(cli.quick_parse(argv, opts))
    assert got == _argparse(argv)
    assert got["exp_db"] == ["e3.db"] and got["table"] == ["default", "keys"]
    assert got["json"] is True and got["dry_run"] is False and got["output_db"] is None
    for other in (["--base", "b.db"], ["--base-db=b.db"], ["--exp-db"], ["--json", "x"],
                  ["--strategy", "union"], ["--base-db", "-b.db"], ["--", "--json"],
                  ["-h"], ["--help"], ["--base-db", "a", "b"]):
        assert cli.quick_parse(other, opts) is None, other


def test_exit_now_flushes_runs_atexit_and_keeps_the_code(tmp_path):
    """cli.exit_now skips the teardown only: buffered output (a pipe), atexit callbacks and
    the exit code are those of sys.exit; a live thread gets a normal exit (it is waited for)."""
    import subprocess

    prog = tmp_path / "p.py"
    prog.write_text(
        "import atexit, sys, threading, time\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "from _evlib import cli\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "print('out ' * 1000)\n"
        "print('err line', file=sys.stderr)\n"
        "if sys.argv[1] == 'thread':\n"
        "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "cli.exit_now(int(sys.argv[2]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered
    for mode, rc in (("plain", 0), ("plain", 3), ("thread", 4)):
        p = subprocess.run([sys.executable, str(prog), mode, str(rc)], capture_output=True,
                           text=True, env=env)
        assert p.returncode == rc
        assert p.stderr == "err line\n"
        tail = ["thread done", "atexit ran"] if mode == "thread" else ["atexit ran"]
        assert p.stdout.splitlines() == ["out " * 1000, *tail]
