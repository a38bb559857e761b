"""One validated configuration object, read from params.yaml (the sections and their rules: `schema`).

Every stage calls `load_config()` first: a bad value stops it with one line naming the key and what is allowed
(exit code 2) before any data is read or anything written: pydantic's first error, re-worded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError

from diffaug.config.schema import *  # noqa: F403 (the sections and constants are the package's API)
from diffaug.config.schema import SET_KINDS, Config, Invalid
from diffaug.config.schema import __all__ as _sections
from diffaug.errors import ConfigError

__all__ = [*_sections, "ConfigError", "json_schema", "load_config", "parse_config", "parse_yaml", "read_params"]
ADAPTER = TypeAdapter(Config)
# What a value that is not of the type at all is told (pydantic's error types, and the names it gives union arms)
NAMES = {"int": "an integer", "float": "a number", "str": "a string", "string": "a string", "bool": "true or false", "list": "a list",
         "dict": "a mapping", "dataclass": "a mapping", "MixtureFilter": "a mapping", "union_tag_not_found": "a mapping", "finite_number": "a finite number"}
MISMATCH = {"int_type", "float_type", "string_type", "bool_type", "list_type", "dict_type", "dataclass_type", "literal_error", "none_required",
            "union_tag_not_found"}


def json_schema() -> dict[str, Any]:
    """params.yaml's JSON schema (params.schema.json is this, written by `python -m diffaug.config --schema`)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **ADAPTER.json_schema()}


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from already-parsed YAML; errors are prefixed with `source`."""
    try:
        return ADAPTER.validate_python(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {explain(e.errors(), data).removeprefix(': ')}") from None


def read_params(path: str | Path = "params.yaml") -> Any:
    """params.yaml's YAML as dvc reads it (see parse_yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; allowed: a YAML file") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """YAML as dvc reads it: ruamel.yaml, YAML 1.2 (`1e-3` is a number), a key given twice an error; a broken
    text is one ConfigError line starting with `where`."""
    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as e:  # its problem reads 'found duplicate key "steps" with value ...'
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise ConfigError(f"{where}: {(e.problem or '').split(chr(34))[1]}: given twice at line {line}; allowed: each key once per section") from None
    except YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0] if str(e) else 'invalid YAML'})") from None


def load_config(path: str | Path = "params.yaml") -> Config:
    return parse_config(read_params(path), str(path))


def _named(what: str) -> str:
    """'a number' for pydantic's float_type or a union arm named 'float'; 'a list of a number' for 'list[float]'."""
    if what.startswith("function-"):  # a section with a validator: 'function-after[_one_rule(), MixtureFilter]'
        return _named(what[:-1].rsplit(", ", 1)[1])
    if what.startswith("list["):
        return f"a list of {_named(what[5:-1])}"
    if what.startswith("literal["):
        return what[8:-1].replace(", ", " | ")
    return NAMES.get(what.removesuffix("_type"), what)


def explain(errors: list[ErrorDetails], data: Any) -> str:
    """'<dotted.key>: <what is wrong>; allowed: ...' for the first of pydantic's errors.

    Its location is walked through the YAML data: a part that is no key or index there names a union's arm. Of a union's
    arms, the error inside the arm the value was meant for wins (a list given for `float | list[float]` is told about its
    bad element); when every arm refuses the value's type, the line names them all."""
    err, key, i = errors[0], "", -1
    while (i := i + 1) < len(err["loc"]):
        part = err["loc"][i]
        if isinstance(data, list) and isinstance(part, int) and part < len(data):
            key, data = f"{key}[{part}]", data[part]
        elif isinstance(data, dict) and part in data:
            key, data = f"{key}.{part}".lstrip("."), data[part]
        elif part != "[key]":  # a union's arm
            group = [e for e in errors if e["loc"][:i] == err["loc"][:i]]
            inner = [e for e in group if len(e["loc"]) > i + 1 or e["type"] not in MISMATCH]
            if not inner:
                return f"{key}: got {data!r}; allowed: {' or '.join(_named(str(e['loc'][i])) for e in group)}"
            err = inner[0]
    kind, ctx = err["type"], err.get("ctx") or {}
    if isinstance(ctx.get("error"), Invalid):
        return f"{'.'.join(k for k in (key, ctx['error'].key) if k)}: {ctx['error']}"
    if kind == "union_tag_invalid":
        return f"{key}.kind: got {data.get('kind')!r}; allowed: {' | '.join(map(repr, SET_KINDS))}"
    if kind == "literal_error":
        return f"{key}: got {err['input']!r}; allowed: {ctx['expected'].replace(', ', ' | ').replace(' or ', ' | ')}"
    return f"{key}: got {err['input']!r}; allowed: {_named(kind) if kind in MISMATCH or kind == 'finite_number' else err['msg']}"
