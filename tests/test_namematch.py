"""The `re`-free name matchers a first `list` uses (evtags.parse_e, evtags.maybe_e,
settings.is_metric_name, settings.is_step_name) accept exactly the languages of the
regexes they stand in for (evtags.E_TAG, MAYBE_E_TAG, settings.METRIC_RE, STEP_RE), and a
first list in a fresh clone imports neither `re` nor configparser."""

from __future__ import annotations

import itertools
import random
import re

import _evlib.evtags as evtags
import _evlib.settings as settings

WORDS = [*settings.METRIC_WORDS, "rouge", "rougel", "rouge_l", *settings.STEP_WORDS,
         *settings.STEP_COUNTED, "n", "num", "count", "epochs", "max_steps"]
BITS = ["_", "\n", "x", "1", "٣", "²", "é", "-", " ", ".", "e", "L", "\t", "rouge", "f1",
        "_count", "n_", "acc"]


def names(seed: int, k: int):
    rng = random.Random(seed)
    pool = WORDS + BITS
    for a, b in itertools.product(pool, repeat=2):
        yield a + b
        yield a + "_" + b
        yield "_" + a + "\n"
    for _ in range(k):
        yield "".join(rng.choice(pool) for _ in range(rng.randint(0, 6)))
    yield ""


def test_the_metric_and_step_matchers_accept_the_regexes_languages():
    metric, step = settings.METRIC_RE, settings.STEP_RE
    for name in names(1, 60000):
        assert settings._metric_name(name) == bool(metric.search(name)), repr(name)
        assert settings.is_metric_name(name) == bool(metric.search(name)), repr(name)
        assert settings.is_step_name(name) == bool(step.fullmatch(name)), repr(name)


def test_the_e_tag_matchers_accept_the_regexes_languages():
    rng = random.Random(2)
    pool = ["e", "1", "12", "0", ".", "\n", "٣", "²", "x", "-rc", " ", "_", "E", "١٢"]
    cases = ["e1.2.3", "e1.2.3\n", "e1.2.3\n\n", "e1.2", "e1.2.3.4", "e.1.2", "e1..3",
             "e٣.1.2", "e².1.2", "e01.002.3", "e1.2.3 ", "\ne1.2.3", "e1", "e", ""]
    cases += ["".join(rng.choice(pool) for _ in range(rng.randint(0, 8))) for _ in range(60000)]
    for name in cases:
        m = evtags.E_TAG.match(name)
        want = (int(m[1]), int(m[2]), int(m[3])) if m else None
        assert evtags.parse_e(name) == want, repr(name)
        assert evtags.maybe_e(name) == bool(evtags.MAYBE_E_TAG.match(name)), repr(name)


def test_digit_and_word_characters_are_sres_over_all_of_unicode():
    digit, word = re.compile(r"\d"), re.compile(r"\w")
    for i in range(0x110000):
        c = chr(i)
        assert c.isdecimal() == bool(digit.match(c)), hex(i)
        assert settings._word(c) == bool(word.match(c)), hex(i)


def test_the_plain_config_reader_reads_what_configparser_reads_or_refuses():
    import configparser

    import _evlib.dvcmeta as dvcmeta

    pieces = ["[core]", "['remote \"storage\"']", "[cache]", "[DEFAULT]", "[]", "[a] x",
              "    remote = storage", "remote=storage", "  url = /tmp/r", "\turl = /tmp/r",
              "        dir = ../c", "URL = s3://b/x", "url: /x", "a:b = c", "= x", "novalue",
              "# c", "; c", "", "   ", "type = hardlink,symlink", "x = 'q'", "x = a # b",
              "[core]  ", "  [cache]", "é = ü", "k = v\x0c", "\ufeff[core]", "k ="]
    rng = random.Random(3)
    accepted = 0
    for _ in range(40000):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        text += rng.choice(["", "\n"])
        got = dvcmeta._plain_config(text)
        if got is None:
            continue
        accepted += 1
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.read_string(text)
        assert got == {s: dict(cp.items(s)) for s in cp.sections()}, repr(text)
    assert accepted > 1000
    # what `dvc init`, `dvc remote add -d` and `dvc cache dir --local` write
    dvc = "[core]\n    remote = storage\n['remote \"storage\"']\n    url = /tmp/r\n"
    assert dvcmeta._plain_config(dvc) == {"core": {"remote": "storage"},
                                          "'remote \"storage\"'": {"url": "/tmp/r"}}
    assert dvcmeta._plain_config("[cache]\n    dir = ../c\n") == {"cache": {"dir": "../c"}}
    assert dvcmeta._plain_config("") == {}
