"""params.yaml as one validated Config (the sections and their rules: `schema`). Every stage calls `load_config()` first:
a bad value stops it with one line, `params.yaml: <dotted key>: <pydantic's message> (got <value>)`, before any work."""
from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError

from diffaug.config.schema import *  # noqa: F403 (the sections and constants are the package's API)
from diffaug.config.schema import Config, Invalid
from diffaug.config.schema import __all__ as _sections
from diffaug.errors import ConfigError

__all__ = [*_sections, "ConfigError", "json_schema", "load_config", "parse_config", "parse_yaml", "read_params"]


def json_schema() -> dict[str, Any]:
    """params.yaml's JSON schema (params.schema.json is this, written by `python -m diffaug.config --schema`)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from already-parsed YAML; errors are prefixed with `source`."""
    try:
        return Config.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {explain(e.errors(), data)}") from None


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


def explain(errors: list[ErrorDetails], data: Any) -> str:
    """'<dotted key>: <pydantic's message> (got <value>)' for pydantic's first error (a missing key only if nothing else is
    wrong), plus the keys there are for an unknown key. A location's parts that are no key or index of the data name a
    union's arm: the key leaves them out. Of the errors of a union's arms, the deepest wins (the arm the value was meant
    for), and a type mismatch only if every arm refuses the type: their messages are joined."""
    found = [(*_located(e, data), e) for e in errors]
    first = next((f for f in found if f[2]["type"] != "missing"), found[0])[0]
    related = [f for f in found if f[0][:len(first)] == first or first[:len(f[0])] == f[0]]
    deepest = [f for f in related if len(f[0]) == max(len(f[0]) for f in related)]
    chosen = [f for f in deepest if not f[2]["type"].endswith("_type")] or deepest
    path, value, err = chosen[0]
    message = " or ".join(dict.fromkeys(str((e.get("ctx") or {}).get("error") or e["msg"]) for p, _, e in chosen if p == path))
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    got = "" if err["type"] == "missing" else f" (got {value!r:.100})"
    allowed = f"; allowed: {', '.join(_keys(err['loc']))}" if err["type"] == "extra_forbidden" else ""
    return f"{key + ': ' if key else ''}{message}{got}{allowed}"


def _located(err: ErrorDetails, data: Any) -> tuple[list[str | int], Any]:
    """The parts of the error's location (and of an Invalid's key below it) that are keys or indexes of the data (or the
    last part, a key not given), and the value: at an Invalid's key; any other error's input."""
    invalid, path = (err.get("ctx") or {}).get("error"), []
    loc = (*err["loc"], *(invalid.key if isinstance(invalid, Invalid) else ()))
    for i, part in enumerate(loc):
        node = dict(enumerate(data)) if isinstance(data, list) else data
        if isinstance(node, dict) and part in node:
            path.append(part)
            data = node[part]
        elif isinstance(data, dict | None) and i == len(loc) - 1:  # a key not given: a default refused, or one required
            path.append(part)
    return path, data if isinstance(invalid, Invalid) else err["input"]


def _models_in(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _keys(loc: tuple[str | int, ...]) -> list[str]:
    """The keys of the section an unknown key (at `loc`) lies in: the models are followed along the location."""
    models: list[Any] = [Config]
    for part in loc[:-1]:
        if named := [m for m in models if m.__name__ == part]:  # a tagged union's arm: its tag is the class name
            models = named
        elif len(models) == 1 and (field := next((f for n, f in models[0].model_fields.items() if part in (n, f.alias)), None)):
            models = _models_in(field.annotation) or models
    return [f.alias or n for n, f in models[0].model_fields.items()]
