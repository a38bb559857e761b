"""params.yaml as one validated Config (its sections and rules: `schema`). Every stage calls `load_config()` first: a bad
value stops it with one line, `params.yaml: <dotted key>: <pydantic's message> (got <value>)`, before any work."""
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError

from diffaug.config.schema import *  # noqa: F403 (schema's __all__, its sections and constants, are the package's API too)
from diffaug.config.schema import Config, Invalid
from diffaug.errors import ConfigError


def load_config(path: str | Path = "params.yaml") -> Config:
    return parse_config(read_params(path), str(path))


def read_params(path: str | Path = "params.yaml") -> Any:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    return parse_yaml(Path(path).read_bytes(), str(path))  # bytes: ruamel.yaml refuses text that is not UTF-8


def parse_yaml(text: str | bytes, where: str) -> Any:
    """YAML as dvc reads it: ruamel.yaml, YAML 1.2 (`1e-3` is a number), a key given twice an error."""
    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as e:  # its problem reads 'found duplicate key "steps" with value ...'
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise ConfigError(f"{where}: {(e.problem or '').split(chr(34))[1]}: given twice at line {line}; allowed: each key once per section") from None
    except YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({(str(e) or 'invalid YAML').splitlines()[0]})") from None


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    try:
        return Config.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(f"{source}: {explain(e.errors(), data)}") from None


def explain(errors: list[ErrorDetails], data: Any) -> str:
    """'<dotted key>: <pydantic's message> (got <value>)' for pydantic's first error (a missing key, or a default made from
    a refused one, only if nothing else is wrong). Of the errors at or below its key (a union's arms), the deepest wins (the arm the value was meant for), and
    a type mismatch only if every arm refuses the type: their messages are joined."""
    found = [(*_located(e, data), e) for e in errors]
    first = next((f for f in found if f[2]["type"] not in ("missing", "default_factory_not_called")), found[0])[0]
    related = [f for f in found if f[0][:len(first)] == first]
    deepest = [f for f in related if len(f[0]) == max(len(f[0]) for f in related)]
    chosen = [f for f in deepest if not f[2]["type"].endswith("_type")] or deepest
    path, value, err = chosen[0]
    message = " or ".join(dict.fromkeys(str((e.get("ctx") or {}).get("error") or e["msg"]) for p, _, e in chosen if p == path))
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    got = "" if err["type"] == "missing" else f" (got {value!r:.100})"
    return f"{key + ': ' if key else ''}{message}{got}"


def _located(err: ErrorDetails, data: Any) -> tuple[list[str | int], Any]:
    """The parts of the error's location (and of an Invalid's key below it) that are keys or indexes of the data (the
    others name a union's arm), or the last part, a key not given; and the value: at an Invalid's key, else the input."""
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
