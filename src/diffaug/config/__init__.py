"""One validated configuration object, read from params.yaml (the sections and their rules: `schema`).

Every stage calls `load_config()` first: a bad value stops it with one line naming the key and what is allowed
(exit code 2) before any data is read or anything written: pydantic's first error, re-worded.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import TypeAdapter, ValidationError

from diffaug.config.schema import *  # noqa: F403 (the sections and constants are the package's API)
from diffaug.config.schema import SET_KINDS, Config, Invalid
from diffaug.config.schema import __all__ as _sections
from diffaug.errors import ConfigError

__all__ = [*_sections, "ConfigError", "json_schema", "load_config", "parse_config"]
ADAPTER = TypeAdapter(Config)
# pydantic error types meaning "not this type at all" (as opposed to a value of the right type that breaks a rule)
MISMATCH = {"int_type", "float_type", "string_type", "bool_type", "list_type", "dict_type", "dataclass_type", "literal_error",
            "union_tag_not_found", "none_required"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (DVC refuses such files; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key}: given twice at line {key_node.start_mark.line + 1}; allowed: each key once per section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def json_schema() -> dict[str, Any]:
    """params.yaml's JSON schema (params.schema.json is this, written by `python -m diffaug.config --schema`)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **ADAPTER.json_schema()}


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from already-parsed YAML; errors are prefixed with `source`."""
    try:
        return ADAPTER.validate_python(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {explain(e.errors()).removeprefix(': ')}") from None


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; allowed: a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0] if str(e) else 'invalid YAML'})") from None
    return parse_config(data, str(path))


# ----------------------------------------------------------------------------- pydantic's errors as one line
# Types here come from get_type_hints without extras: the rules (Annotated metadata) stripped, only what the YAML may hold left.
def _keys(cls: Any) -> dict[str, Any]:
    """A section's keys as params.yaml spells them -> their types."""
    hints = typing.get_type_hints(cls)
    return {(getattr(f.default, "alias", None) or f.name): hints[f.name] for f in dataclasses.fields(cls)}


def _label(arm: Any) -> str:
    """The name pydantic gives a union arm in an error's location."""
    if typing.get_origin(arm) is list:
        return f"list[{_label(typing.get_args(arm)[0])}]"
    if typing.get_origin(arm) is Literal:
        return f"literal[{', '.join(map(repr, typing.get_args(arm)))}]"
    tag = getattr(arm, "kind", None)  # a synthetic set's arm is tagged with its kind, the default of its `kind` field
    return tag if isinstance(tag, str) else arm.__name__


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (list, dict):
        return f"a list of {type_name(args[0])}" if origin is list else f"a mapping of str to {type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(_keys(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _join(key: str, part: str) -> str:
    return ".".join(p for p in (key, part) if p)


def explain(errors: list[Any]) -> str:
    """'<dotted.key>: <what is wrong>; allowed: ...' for the first of pydantic's errors.

    Walks the error's location through the types, so that a value of the wrong type is told the type it may have.
    Of a union's arms, the error inside the arm the value was meant for wins (a list given for `float | list[float]`
    is told about its bad element); when no arm takes the value at all, the line names the whole union."""
    err, tp, key, i = errors[0], Config, "", 0
    while i < len(err["loc"]):
        loc, part, origin = err["loc"], str(err["loc"][i]), typing.get_origin(tp)
        # the arms of a union that pydantic tells apart (X | None is X that may be null: no arm of its own)
        arms = [a for a in typing.get_args(tp) if a is not type(None)] if origin in (Union, types.UnionType) else []
        if len(arms) > 1:
            inner = [e for e in errors if e["loc"][:i] == loc[:i] and (len(e["loc"]) > i + 1 or len(e["loc"]) > i and e["type"] not in MISMATCH)]
            if not inner and err["type"] in MISMATCH:
                return f"{key}: got {err['input']!r}; allowed: {type_name(tp)}"
            err = inner[0] if inner else err
            at = str(err["loc"][i])  # the arm's name; a section with a model_validator is 'function-after[..., Name]'
            tp = next((a for a in arms if at == _label(a) or at.endswith(f" {_label(a)}]")), arms[0])
        elif dataclasses.is_dataclass(tp):
            if part not in (keys := _keys(tp)):
                return f"{_join(key, part)}: unknown key; allowed: {', '.join(keys)}"
            tp, key = keys[part], _join(key, part)
        elif origin in (dict, list):
            tp, key = typing.get_args(tp)[-1], _join(key, part) if origin is dict else f"{key}[{part}]"
        i += 1
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), Invalid):
        return f"{_join(key, ctx['error'].key)}: {ctx['error']}"
    if kind == "union_tag_invalid":
        return f"{_join(key, 'kind')}: got {ctx['tag']!r}; allowed: {' | '.join(map(repr, SET_KINDS))}"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{key}: unknown key"
    allowed = "allowed: a finite number" if kind == "finite_number" else f"allowed: {type_name(tp)}" if kind in MISMATCH else err["msg"]
    return f"{key}: got {err.get('input')!r}; {allowed}"
