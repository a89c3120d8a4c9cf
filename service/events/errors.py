"""Turn the compiled validator's errors into ours: the field path in our style and the rule in words.

msgspec says ``Expected `float` <= 1.0 - at `$.predictions[0].confidence```; the DLQ reason says
``predictions[0].confidence: must be between 0 and 1, got 1.5``. The path is walked through the
declared types (for the wording ``Meta.extra`` gives, see service.events.wire) and through the decoded
document (for the offending value). This runs only for rejected messages, never on the hot path.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import msgspec
import msgspec.inspect as mi

from service.errors import EventValidationError
from service.events.constants import MAX_CONFIDENCE_SCORES, MIN_CONFIDENCE_SCORES
from service.events.wire import ConfidenceKeyedEntry

_MISSING: Any = object()
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<inpath>[^`]*)`)?)?$", re.S)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(\.\.\.)\]")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]*)`(?P<rest>.*)$", re.S)

# What an unknown-field message calls each object.
_OBJECT_NAMES = {
    "PredictionEventWire": "prediction event",
    "MetricEventWire": "metric event",
    "LabelEventWire": "label event",
    "DataRowRef": "dataRow",
    "CustomMetricWire": "customMetric",
    "MetricRowWire": "metric",
}


def type_name(value: Any) -> str:
    """How a message names a JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_keys(path: str, keys: list[str], allowed: list[str], what: str) -> EventValidationError:
    """Name every unknown key (and a likely intended one) so a typo is not mistaken for absence."""
    allowed_list = sorted(allowed)
    unknown = sorted(keys)
    first = unknown[0]
    guess = difflib.get_close_matches(first, allowed_list, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    others = f"; also unknown: {', '.join(unknown[1:])}" if len(unknown) > 1 else ""
    return EventValidationError(
        join(path, first), f"unknown {what} field{hint}{others}; allowed: {', '.join(allowed_list)}"
    )


def confidence_count_error(path: str, n: int) -> EventValidationError:
    return EventValidationError(
        path,
        f"a confidence-keyed value needs between {MIN_CONFIDENCE_SCORES} and {MAX_CONFIDENCE_SCORES} keys, got {n}",
    )


class _Located:
    """The declared type and the document value at one path, with the wording hints met on the way."""

    def __init__(self, tinfo: Any, value: Any) -> None:
        self.tinfo = tinfo
        self.value = value
        self.extra: dict[str, Any] = {}

    def unwrap(self) -> Any:
        """The type without its Annotated metadata (collected into ``extra``) and without ``| None``."""
        t = self.tinfo
        while True:
            if isinstance(t, mi.Metadata):
                self.extra = {**self.extra, **(t.extra or {})}  # the inner, more specific wording wins
                t = t.type
            elif isinstance(t, mi.UnionType):
                members = [m for m in t.types if not isinstance(m, mi.NoneType)]
                if len(members) != 1:
                    return t
                t = members[0]
            else:
                return t


_MEMBER_FOR_WANT = {"array": "index", "object": "key", "str": "str", "float": "float", "int": "int"}


def _member_for(t: Any, step: str) -> Any:
    """The union member a path step goes into: a struct for ``.field``, an array for ``[i]``, a dict for ``[...]``."""
    want: tuple[type, ...] = {
        "field": (mi.StructType, mi.DictType),
        "index": (mi.ListType, mi.TupleType),
        "key": (mi.DictType, mi.StructType),
        "str": (mi.StrType,),
        "float": (mi.FloatType,),
        "int": (mi.IntType,),
    }.get(step, ())
    for m in t.types:
        inner = m
        while isinstance(inner, mi.Metadata):
            inner = inner.type
        if isinstance(inner, want):
            return m
    return None


def _step(loc: _Located, kind: str, arg: Any) -> _Located | None:
    t = loc.unwrap()
    if isinstance(t, mi.UnionType):
        member = _member_for(t, kind)
        if member is None:
            return None
        loc = _Located(member, loc.value)
        t = loc.unwrap()
    value = loc.value
    if kind == "field" and isinstance(t, mi.StructType):
        for f in t.fields:
            if f.encode_name == arg:
                v = value.get(arg, _MISSING) if isinstance(value, dict) else _MISSING
                return _Located(f.type, v)
        return None
    if kind == "index" and isinstance(t, mi.ListType | mi.TupleType):
        item = t.item_type if isinstance(t, mi.ListType) else t.item_types[min(arg, len(t.item_types) - 1)]
        v = value[arg] if isinstance(value, list) and arg < len(value) else _MISSING
        return _Located(item, v)
    if kind == "key" and isinstance(t, mi.DictType):
        return _Located(t.value_type, _MISSING)
    return None


def _shape_error(loc: _Located, path: str) -> EventValidationError | None:
    """A fixed-length array of the wrong length is reported as such, before any of its items."""
    probe = _Located(loc.tinfo, loc.value)
    t = probe.unwrap()
    if isinstance(t, mi.UnionType):
        member = _member_for(t, "index")
        if member is None:
            return None
        probe = _Located(member, loc.value)
        t = probe.unwrap()
    if isinstance(t, mi.TupleType) and isinstance(loc.value, list) and len(loc.value) != len(t.item_types):
        return EventValidationError(path, _reason("Expected `array` of length", probe))
    return None


def _describe(loc: _Located) -> str:
    t = loc.unwrap()
    if "expect" in loc.extra:
        return str(loc.extra["expect"])
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.FloatType | mi.IntType):
        return "a number"
    if isinstance(t, mi.BoolType):
        return "a boolean"
    if isinstance(t, mi.ListType | mi.TupleType):
        return "a list"
    if isinstance(t, mi.StructType | mi.DictType):
        return "an object"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(map(str, t.values))
    return "a valid value"


def _num(x: float) -> str:
    if x >= 1e6 and float(x).is_integer():
        exp = len(str(int(x))) - 1
        if int(x) == 10**exp:
            return f"1e{exp}"
    return str(int(x)) if float(x).is_integer() else str(x)


def _reason(msg: str, loc: _Located) -> str:
    """The rule a value broke, in words, from msgspec's message and the declared type."""
    t = loc.unwrap()
    value = loc.value
    got = "" if value is _MISSING else (f", got {value!r}" if not isinstance(value, dict | list) else "")
    m = _EXPECTED.match(msg)
    if m is None:
        if msg.startswith("Invalid enum value"):
            values = loc.extra.get("one_of") or ", ".join(map(str, getattr(t, "values", ())))
            return f"must be one of {values}{got}"
        return msg[:1].lower() + msg[1:]
    rest = m.group("rest")
    if isinstance(t, mi.UnionType) and not rest.startswith(", got"):
        # A constraint failed on one member of a union: describe that member.
        member = _member_for(t, _MEMBER_FOR_WANT.get(m.group("want"), ""))
        if member is not None:
            inner = _Located(member, value)
            inner.extra = dict(loc.extra)
            return _reason(msg, inner)
    if rest.startswith(", got"):
        found = type_name(value) if value is not _MISSING else m.group("rest")[7:-1]
        return f"must be {_describe(loc)}, got {found}"
    if " matching regex" in rest:
        if isinstance(value, str) and not value.strip() and isinstance(t, mi.StrType) and t.pattern == r"\S":
            return f"must be {_describe(loc)}, got a blank one"
        return f"must be {_describe(loc)}{got}"
    if "multiple of" in rest:
        return f"must be {_describe(loc)}{got}"
    if " of length" in rest and isinstance(t, mi.StrType):
        return f"must be {_describe(loc)}, got a blank one"
    if " of length" in rest:
        n = len(value) if isinstance(value, list | tuple | dict | str) else None
        if "shape" in loc.extra:
            return f"{loc.extra['shape']}; got {n} elements"
        if n == 0:
            return str(loc.extra.get("empty", "must not be empty"))
        return f"must be {_describe(loc)} {rest.strip()}" + (f", got {n}" if n is not None else "")
    if isinstance(t, mi.FloatType | mi.IntType):
        lo = t.ge if t.ge is not None else t.gt
        hi = t.le if t.le is not None else t.lt
        if lo is not None and hi is not None:
            return f"must be between {_num(lo)} and {_num(hi)}{got}"
    return f"must be {_describe(loc)}{rest}{got}"


def _split(msg: str) -> tuple[str, list[tuple[str, Any]]]:
    m = _AT.match(msg)
    assert m is not None  # the pattern matches any text
    path = m.group("inpath") or m.group("path") or "$"
    steps: list[tuple[str, Any]] = []
    for f, i, k in _SEGMENT.findall(path[1:]):
        if f:
            steps.append(("field", f))
        elif i:
            steps.append(("index", int(i)))
        else:
            steps.append(("key", k))
    return m.group("msg"), steps


def from_msgspec(exc: msgspec.ValidationError, root: Any, doc: Any, prefix: str = "") -> EventValidationError:
    """Map a msgspec validation error of ``doc`` against type ``root`` to an EventValidationError."""
    try:
        return _from_msgspec(exc, root, doc, prefix)
    except Exception:  # the wording is best effort; the rejection itself must always come through
        msg, steps = _split(str(exc))
        path = prefix
        for kind, arg in steps:
            path = join(path, str(arg)) if kind == "field" else f"{path}[{arg}]"
        return EventValidationError(path, msg)


def _from_msgspec(exc: msgspec.ValidationError, root: Any, doc: Any, prefix: str) -> EventValidationError:
    msg, steps = _split(str(exc))
    loc = _Located(mi.type_info(root), doc)
    path = prefix
    for n, (kind, arg) in enumerate(steps):
        if kind == "key":
            return _from_dict_entry(loc, path, steps[n + 1 :], msg)
        if kind == "index":
            shape = _shape_error(loc, path)
            if shape is not None:
                return shape
        nxt = _step(loc, kind, arg)
        if nxt is None:
            return EventValidationError(path, msg)
        loc = nxt
        path = join(path, arg) if kind == "field" else f"{path}[{arg}]"
    if msg.startswith("Object missing required field `"):
        name = msg.split("`")[1]
        return EventValidationError(join(path, name), "is required")
    if msg.startswith("Object contains unknown field `"):
        t = loc.unwrap()
        if isinstance(t, mi.UnionType):
            t = _member_for(t, "field")
            t = _Located(t, loc.value).unwrap() if t is not None else None
        if isinstance(t, mi.StructType) and isinstance(loc.value, dict):
            allowed = [f.encode_name for f in t.fields]
            unknown = [str(k) for k in loc.value if k not in allowed]
            what = _OBJECT_NAMES.get(t.cls.__name__, "object")
            return unknown_keys(path, unknown, allowed, what)
        name = msg.split("`")[1]
        return EventValidationError(join(path, name), "unknown field")
    return EventValidationError(path, _reason(msg, loc))


def _from_dict_entry(loc: _Located, path: str, _rest: list[tuple[str, Any]], msg: str) -> EventValidationError:
    """msgspec marks a dict value as ``[...]``: find the entry that fails and report it by its key."""
    t = loc.unwrap()
    if isinstance(t, mi.UnionType):
        member = _member_for(t, "key")
        if member is not None:
            loc = _Located(member, loc.value)
            t = loc.unwrap()
    value = loc.value
    if not isinstance(t, mi.DictType) or not isinstance(value, dict):
        return EventValidationError(path, msg)
    if not MIN_CONFIDENCE_SCORES <= len(value) <= MAX_CONFIDENCE_SCORES:
        return confidence_count_error(path, len(value))  # the value-level rule is reported first
    entry_type = ConfidenceKeyedEntry
    for k, v in value.items():
        try:
            msgspec.convert(v, type=entry_type)
        except msgspec.ValidationError as inner:
            return _from_msgspec(inner, entry_type, v, f'{path}["{k}"]')
    return EventValidationError(path, msg)

