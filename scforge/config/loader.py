"""Loads a dataclass schema from YAML recipes plus ``key=value`` dotlist overrides.

Merging into ``OmegaConf.structured(Schema)`` makes a misspelled or unknown key, or a value of
the wrong type, fail at load time with the key's full name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""


def load_config(
    schema: type[T],
    paths: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Builds a ``schema`` instance from YAML files (merged in order) and dotlist overrides.

    Args:
        schema: a dataclass type (the schema).
        paths: YAML recipes, later ones override earlier ones.
        overrides: ``key=value`` strings, e.g. ``tokenizer.strategy=binned_expression``.
        base: optional plain dict merged before the files.

    Raises:
        ConfigError: unknown key, wrong type, unreadable file or malformed override.
    """
    conf = OmegaConf.structured(schema)
    layers: list[Any] = []
    if base:
        layers.append(OmegaConf.create(base))
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as e:  # yaml errors come in several types
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not key=value (e.g. shard.cells_per_shard=1000)"
            )
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(conf, *layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0].split(". Did you mean")[0]  # ours names the full key
        raise ConfigError(f"invalid config key {key!r}: {msg}{_fix_hint(conf, key, e)}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj  # type: ignore[return-value]


def _fix_hint(conf: Any, key: str, err: Exception) -> str:
    """What to do about an OmegaConf error: the valid keys (closest first) or the wanted type."""
    import difflib

    from omegaconf.errors import ConfigKeyError

    if not isinstance(err, ConfigKeyError):
        return "; give a value of the field's type (see the schema in scforge/config)"
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(conf, parent) if parent else conf
    if not OmegaConf.is_dict(node):
        return ""
    keys = [str(k) for k in node]
    close = difflib.get_close_matches(leaf, keys, n=3)
    where = f"{parent}." if parent else ""
    if close:
        return f"; did you mean {', '.join(where + c for c in close)}?"
    return f"; valid keys here: {', '.join(where + k for k in keys)}"


def to_yaml(obj: Any) -> str:
    """Resolved YAML of a config dataclass (written next to every output)."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass."""
    return dataclasses.asdict(obj)
