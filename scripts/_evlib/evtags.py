"""Experiment tags: e<major>.<minor>.<patch> names, and what `git for-each-ref refs/tags`
says of each tag (date, commit, message, the lineage block tag_suggest writes).

Parsing only (no git process): history.all_tags runs git and reads its answer here, and so
does listcold (a first `list`, without the rest of history).
"""

from __future__ import annotations

from . import fastjson
from .plain import plain

# The language of an e-tag, as a regex (compiled on first use: `re` and its enum import are
# ~17 ms of a first list, which matches names by parse_e and maybe_e instead; test_namematch
# checks that the two accept the same names).
_PATTERNS = {"E_TAG": r"^e(\d+)\.(\d+)\.(\d+)$",
             "MAYBE_E_TAG": r"^e\d"}  # looks like an e-tag: e2, e1.2, e1.2.3-rc are malformed


def __getattr__(name: str):
    if name in _PATTERNS:
        import re

        globals()[name] = got = re.compile(_PATTERNS[name])
        return got
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
# refname, date, what an annotated tag points at (its type, its id: empty for a lightweight
# tag, whose id is then %(objectname)'s), the message
FOR_EACH_REF = "%(refname:short)%1f%(creatordate:iso-strict)%1f%(*objecttype)%1f" \
               "%(*objectname)%(objectname)%1f%(contents)%1e"


def parse_e(tag: str) -> tuple[int, int, int] | None:
    """E_TAG's match, without `re`: e, then three runs of decimal digits (\\d: any Unicode
    Nd character, which is str.isdecimal's set) joined by dots; `$` also matches before
    one final newline."""
    if tag.endswith("\n"):
        tag = tag[:-1]
    if not tag.startswith("e"):
        return None
    parts = tag[1:].split(".")
    if len(parts) != 3 or not all(p.isdecimal() for p in parts):
        return None  # "".isdecimal() is False: every run has a digit
    return int(parts[0]), int(parts[1]), int(parts[2])


def maybe_e(tag: str) -> bool:
    """MAYBE_E_TAG's match: e and a decimal digit."""
    return len(tag) > 1 and tag[0] == "e" and tag[1].isdecimal()


@plain
class TagInfo:
    name: str
    date: str
    commit: str
    message: str

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0].strip()

    @property
    def description(self) -> str:
        return self.subject.rsplit("|", 1)[-1].strip()

    @property
    def lineage(self) -> dict:
        """The JSON block tag_suggest writes under the first line ({} if absent)."""
        body = self.message.split("\n", 1)[1] if "\n" in self.message else ""
        start = body.find("{")
        if start < 0:
            return {}
        try:
            return fastjson.loads(body[start:body.rfind("}") + 1])
        except ValueError:
            return {}


def parse_refs(out: str) -> tuple[dict[str, TagInfo], list[str]]:
    """for-each-ref's answer (FOR_EACH_REF, trailing newline stripped) as {name: TagInfo},
    and the names of tags of tags (their commit is a tag object's id: peel it)."""
    tags, nested = {}, []
    for rec in out.split("\x1e"):
        rec = rec.strip("\n")
        if not rec:
            continue
        name, date, kind, obj, msg = (rec.split("\x1f") + ["", "", "", "", ""])[:5]
        # %(*objectname) is what an annotated tag points at; it precedes %(objectname)
        tags[name] = TagInfo(name, date, obj[:40], msg.strip())
        if kind == "tag":  # a tag of a tag: peeled one level only, to a tag object
            nested.append(name)
    return tags, nested


def e_tags(tags, warn=None) -> list[str]:
    """Well-formed e-tags in version order; malformed e-looking tags are reported via warn."""
    good = []
    for name in sorted(tags):
        if parse_e(name):
            good.append(name)
        elif maybe_e(name) and warn:
            warn(f"ignoring malformed experiment tag {name!r} (expected e<major>.<minor>.<patch>)")
    return sorted(good, key=parse_e)
