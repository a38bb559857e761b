"""One validated configuration object, read from params.yaml.

Every stage calls `load_config()` first; a bad value stops it with one line that names the key and
what is allowed (exit code 2) before any data is read or anything is written.

  schema    the sections as frozen dataclasses (the one place a knob is declared)
  coerce    generic type checking of parsed YAML against those annotations
  validate  the rules a type cannot express
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from diffaug.config.coerce import coerce
from diffaug.config.schema import (
    ARCHITECTURES,
    PAPER_SOURCES,
    REAL_SOURCES,
    SCHEDULERS,
    SET_KINDS,
    Config,
    DatasetConfig,
    DiffusionConfig,
    EvaluateConfig,
    Img2ImgSet,
    PromptSet,
    Recipe,
    SyntheticConfig,
    SyntheticSet,
    TrainConfig,
)
from diffaug.config.validate import validate
from diffaug.errors import ConfigError

__all__ = [
    "ARCHITECTURES", "PAPER_SOURCES", "REAL_SOURCES", "SCHEDULERS", "SET_KINDS", "Config", "ConfigError", "DatasetConfig",
    "DiffusionConfig", "EvaluateConfig", "Img2ImgSet", "PromptSet", "Recipe", "SyntheticConfig", "SyntheticSet",
    "TrainConfig", "load_config", "parse_config",
]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (DVC refuses
    such files too; PyYAML would silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key}: given twice at line {key_node.start_mark.line + 1}; "
                                  "allowed: each key once per section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_config(data: Any, source: str = "params.yaml") -> Config:
    """Build and validate a Config from already-parsed YAML; errors are prefixed with `source`."""
    try:
        _refuse_old_shape(data)
        cfg = coerce(Config, data if data is not None else {}, "")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def _refuse_old_shape(data: Any) -> None:
    """Before synthetic sets had names, syn1 and syn2 sat directly under `synthetic:`; say where they went."""
    syn = data.get("synthetic") if isinstance(data, dict) else None
    old = [k for k in ("syn1", "syn2") if isinstance(syn, dict) and k in syn]
    if old:
        raise ConfigError(f"synthetic.{old[0]}: moved under synthetic.sets, e.g. synthetic.sets.{old[0]}: "
                          "{kind: prompt, prompt: ...} (see the repository's params.yaml)")


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
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return parse_config(data, str(path))
