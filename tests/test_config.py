"""Config loading: recipes, dotlist overrides, and load-time failures naming the key."""

from __future__ import annotations

import pytest

from scforge.config import ConfigError, ShardJobConfig, load_config
from _testpaths import REPO

RECIPES = sorted((REPO / "configs" / "shard").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    cfg = load_config(ShardJobConfig, [recipe])
    assert cfg.tokenizer.strategy in ("rank_value", "binned_expression", "continuous_projection")


def test_overrides_apply_and_are_typed():
    cfg = load_config(
        ShardJobConfig,
        [REPO / "configs/shard/scgpt_binned.yaml"],
        ["tokenizer.binned_expression.n_bins=21", "source.obs_fields=[a,b]"],
    )
    assert cfg.tokenizer.binned_expression.n_bins == 21
    assert cfg.source.obs_fields == ["a", "b"]
    assert isinstance(cfg, ShardJobConfig)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tokenizer.max_lenght=10", "tokenizer.max_lenght"),
        ("shard.block_cells=lots", "shard.block_cells"),
        ("nonsense=1", "nonsense"),
        ("tokenizer.binned_expression.n_bins=1000", "tokenizer.binned_expression.n_bins"),
        ("vocab.kind=word", "vocab.kind"),
    ],
)
def test_bad_keys_fail_at_load_with_name(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ShardJobConfig, [], [override])


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokenizer:\n  strategy: rank_value\n  maxlen: 3\n")
    with pytest.raises(ConfigError, match="tokenizer.maxlen"):
        load_config(ShardJobConfig, [bad])


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ShardJobConfig, ["/nonexistent.yaml"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(ShardJobConfig, [], ["tokenizer.strategy"])
