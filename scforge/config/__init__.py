"""Typed configuration: dataclass schemas are the truth, YAML files are recipes.

Only this package touches OmegaConf's DictConfig; everything else receives plain dataclasses.
"""

from __future__ import annotations

from scforge.config.loader import ConfigError, load_config, to_yaml
from scforge.config.schema import (
    BinnedConfig,
    ContinuousConfig,
    RankValueConfig,
    ShardConfig,
    ShardJobConfig,
    SourceConfig,
    TokenizerConfig,
    VocabConfig,
)

__all__ = [
    "BinnedConfig",
    "ConfigError",
    "ContinuousConfig",
    "RankValueConfig",
    "ShardConfig",
    "ShardJobConfig",
    "SourceConfig",
    "TokenizerConfig",
    "VocabConfig",
    "load_config",
    "to_yaml",
]
