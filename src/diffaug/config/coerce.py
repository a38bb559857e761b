"""Generic checking of parsed YAML against dataclass annotations: one line per bad value.

Knows nothing about diffaug: it builds any frozen dataclass tree from nested dicts, naming the key
path of the first value whose type is wrong, and rejects nan/inf wherever a number is expected.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from diffaug.errors import ConfigError


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of str to {type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _same_kind(tp: Any, value: Any) -> bool:
    """Whether `value` has the Python type that annotation `tp` takes (a number for float, a dict for
    a dataclass...), so that a failure inside it is about the value, not about picking the arm."""
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp) or origin is dict:
        return isinstance(value, dict)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return origin in (list, str, bool) and isinstance(value, origin)


def _tagged_arms(tp: Any) -> dict[Any, Any]:
    """For a union whose arms are all dataclasses with a `kind: Literal[...]` field: {kind value: arm}
    (the first arm's kind first: it is the default when a mapping gives no kind); else {}."""
    arms = [a for a in typing.get_args(tp) if a is not type(None)]
    tagged: dict[Any, Any] = {}
    for arm in arms:
        if not dataclasses.is_dataclass(arm):
            return {}
        kind = typing.get_type_hints(arm).get("kind")
        if typing.get_origin(kind) is not Literal:
            return {}
        tagged.update({v: arm for v in typing.get_args(kind)})
    return tagged


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Return `value` checked (and, for dataclasses, built) as type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r}; allowed: {type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        # PARSE_AS: a field whose YAML form is wider than the value the dataclass keeps after construction
        hints = {**typing.get_type_hints(tp), **getattr(tp, "PARSE_AS", {})}
        names = [f.name for f in dataclasses.fields(tp)]
        for k in value:
            if k not in names:
                raise ConfigError(f"{key + '.' if key else ''}{k}: unknown key; allowed: {', '.join(names)}")
        build: Any = tp  # a dataclass type (mypy sees only an instance protocol here)
        return build(**{k: coerce(hints[k], v, f"{key + '.' if key else ''}{k}") for k, v in value.items()})
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        tagged = _tagged_arms(tp)
        if tagged and isinstance(value, dict):  # a union of dataclasses told apart by their `kind` field
            kind = value.get("kind", next(iter(tagged)))
            if kind not in tagged:
                raise ConfigError(f"{key}.kind: got {kind!r}; allowed: {' | '.join(map(repr, tagged))}")
            return coerce(tagged[kind], value, key)
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(arm, value, key)
            except ConfigError:
                if _same_kind(arm, value):  # the arm the value was meant for: its message is the precise one
                    raise
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad
        _, item = typing.get_args(tp)
        return {str(k): coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{key}: got {value!r}; allowed: a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a programming error, not bad input
