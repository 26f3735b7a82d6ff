"""cli.quick_parse: argparse's own answer for a plain command line, or None (argparse decides)."""

from __future__ import annotations

import contextlib
import io
import itertools
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
