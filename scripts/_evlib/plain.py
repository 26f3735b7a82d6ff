"""@plain: the part of @dataclass the history path's record types use (an __init__ taking
the annotated fields in order, positionally or by name, with defaults; __eq__; __repr__;
unhashable, as an eq dataclass), without importing dataclasses: it pulls in inspect, ~10 ms
of a fresh `experiments.py list` whose whole budget is a few tens of ms.

    @plain
    class Run:
        track_id: str
        values: dict = factory(dict)   # a fresh dict per instance (default_factory)
        rows: int = 0

fields(cls) names the fields in order.
"""

from __future__ import annotations


class factory:
    """A default made per instance by calling fn (dataclasses' default_factory)."""

    def __init__(self, fn):
        self.fn = fn


_MISSING = object()


def plain(cls):
    names = list(cls.__dict__.get("__annotations__", {}))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    seen_default = False
    for n in names:  # as dataclass: no required field after one with a default
        if n in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {n!r} follows default argument")
    args, body, env = [], [], {"_MISSING": _MISSING}
    for n in names:
        d = defaults.get(n, _MISSING)
        if d is _MISSING:
            args.append(n)
            body.append(f"    self.{n} = {n}")
        elif isinstance(d, factory):
            env[f"_f_{n}"] = d.fn
            args.append(f"{n}=_MISSING")
            body.append(f"    self.{n} = _f_{n}() if {n} is _MISSING else {n}")
        else:
            env[f"_d_{n}"] = d
            args.append(f"{n}=_d_{n}")
            body.append(f"    self.{n} = {n}")
    src = f"def __init__(self, {', '.join(args)}):\n" + ("\n".join(body) or "    pass")
    exec(src, env)  # noqa: S102 - code built from the class's own field names
    for n, d in defaults.items():  # instance attributes, as dataclass leaves factories off
        if isinstance(d, factory):
            delattr(cls, n)
    fields_ = tuple(names)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in fields_)

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields_)
        return f"{cls.__qualname__}({inner})"

    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    cls.__eq__ = __eq__
    cls.__repr__ = __repr__
    cls.__hash__ = None
    cls.__plain_fields__ = fields_
    return cls


def fields(cls) -> tuple[str, ...]:
    """The field names of a @plain class, in order."""
    return cls.__plain_fields__
