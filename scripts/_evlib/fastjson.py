"""json.loads(s) and json.dumps(obj, default=str, ensure_ascii=False), exactly, from the
C accelerator `_json` alone: the `json` package imports `re` and its decoder/encoder
modules (~5 ms of a first `experiments.py list`, whose budget is a few tens of ms).

Both call the same C functions the json package calls for these arguments (its scanner
for loads, its one-shot encoder for dumps); without `_json` (another Python build) they
are the json package's own functions.
"""

from __future__ import annotations

try:
    import _json
except ImportError:  # pragma: no cover - a Python built without the accelerator
    _json = None

_WS = " \t\n\r"  # json.decoder.WHITESPACE
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What json.scanner.make_scanner reads off a JSONDecoder made with no arguments."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict = {}


_scan = _json.make_scanner(_Context()) if _json is not None else None


def loads(s: str):
    """json.loads(s) for a str; ValueError (json's JSONDecodeError is one) if not JSON."""
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(s)
    if s.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    idx = len(s) - len(s.lstrip(_WS))
    try:
        obj, end = _scan(s, idx)
    except StopIteration as err:
        raise ValueError(f"Expecting value: char {err.value}") from None
    end = len(s) - len(s[end:].lstrip(_WS))
    if end != len(s):
        raise ValueError(f"Extra data: char {end}")
    return obj


def dumps_compact(obj) -> str:
    """json.dumps(obj, default=str, ensure_ascii=False): `, ` and `: ` separators, NaN and
    Infinity allowed, circular references refused, what JSON cannot hold made str()."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(obj, default=str, ensure_ascii=False)
    if isinstance(obj, str):
        return _json.encode_basestring(obj)
    enc = _json.make_encoder({}, str, _json.encode_basestring, None, ": ", ", ", False,
                             False, True)
    return "".join(enc(obj, 0))
