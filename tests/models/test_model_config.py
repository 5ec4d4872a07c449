"""ModelConfig validation, presets, YAML recipes, parameter counts and the FLOPs estimate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from scforge.models import (
    ModelConfig,
    count_parameters,
    estimate_flops_per_token,
    get_model,
    list_models,
    non_embedding_params,
    resolve_preset,
)
from scforge.models.config import FAMILIES, PRESETS

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "model"
V1_VOCAB, V2_VOCAB = 25_426, 20_275  # Geneformer token dictionaries (specials included)


def test_families_match_registry() -> None:
    assert list(FAMILIES) == list_models()


def test_resolve_preset_fills_only_zero_sizes() -> None:
    cfg = resolve_preset(ModelConfig(preset="base", num_layers=4))
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (
        768, 4, 12, 3072,
    )  # fmt: skip
    with pytest.raises(ValueError, match="model.preset"):
        resolve_preset(ModelConfig(preset="huge"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"hidden_size": 256, "num_heads": 5}, "model.num_heads=5 does not divide"),
        ({"family": "bert"}, "model.family"),
        ({"preset": "none"}, "model.hidden_size"),
        ({"value_mode": "rank_value"}, "model.value_mode"),
        ({"pooling": "max"}, "model.pooling"),
        ({"family": "autoregressive", "pooling": "cls"}, "model.pooling"),
        ({"pooling": "first"}, "model.pooling"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"n_bins": 1}, "model.n_bins"),
        ({"max_len": 0}, "model.max_len"),
        ({"vocab_size": 2}, "model.cls_token_id"),
        ({"mask_token_id": 0}, "model.mask_token_id"),
        ({"contrastive_temperature": 0.0}, "model.contrastive_temperature"),
        ({"contrastive_weight": -1.0}, "model.contrastive_weight"),
        ({"mlm_weight": 0.0}, "model.mlm_weight"),
        ({"family": "masked_autoencoder", "decoder_layers": 0}, "model.decoder_layers"),
        ({"decoder_hidden_size": 33}, "model.decoder_num_heads"),
    ],
)
def test_invalid_configs_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace("(", r"\(")):
        ModelConfig(**overrides).validate()


def test_head_divisor_message_suggests_a_fix() -> None:
    with pytest.raises(ValueError, match=r"pick a divisor such as \[2, 4, 8, 16\]"):
        ModelConfig(hidden_size=256, num_heads=5).validate()


def test_vocab_required_only_at_build() -> None:
    ModelConfig().validate()
    with pytest.raises(ValueError, match="model.vocab_size"):
        ModelConfig().validate(require_vocab=True)


@pytest.mark.parametrize("name", ["debug", "small", "base", "large"])
def test_yaml_recipes_are_valid_model_configs(name: str) -> None:
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(recipe) <= fields, set(recipe) - fields
    cfg = ModelConfig(**recipe)
    cfg.validate()
    assert cfg.preset == name
    sizes = PRESETS[name]
    assert resolve_preset(cfg) == resolve_preset(
        dataclasses.replace(cfg, hidden_size=0, num_layers=0, num_heads=0, intermediate_size=0)
    ), f"{name}.yaml sizes differ from the preset {sizes}"


def test_yaml_recipe_merges_with_omegaconf_structured() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    schema = omegaconf.OmegaConf.structured(ModelConfig)
    merged = omegaconf.OmegaConf.merge(schema, omegaconf.OmegaConf.load(RECIPES / "debug.yaml"))
    cfg = omegaconf.OmegaConf.to_object(merged)
    assert isinstance(cfg, ModelConfig) and cfg.hidden_size == 40


# (preset, vocab, max_len, target params): Geneformer's published sizes for their vocabularies.
PRESET_TARGETS = [
    ("debug", V2_VOCAB, 2048, 1.0e6),
    ("small", V1_VOCAB, 2048, 10.0e6),
    ("base", V2_VOCAB, 4096, 104e6),
    ("large", V2_VOCAB, 4096, 316e6),
]


@pytest.mark.parametrize(("preset", "vocab", "max_len", "target"), PRESET_TARGETS)
def test_preset_parameter_counts(preset: str, vocab: int, max_len: int, target: float) -> None:
    cfg = ModelConfig(preset=preset, vocab_size=vocab, max_len=max_len)
    with torch.device("meta"):
        model = get_model(cfg)
    n = count_parameters(model)
    assert abs(n - target) <= 0.15 * target, f"{preset}: {n:,} params vs target {target:,.0f}"


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_non_embedding_params_match_the_built_model(family: str, norm: str) -> None:
    value_mode = "continuous" if family == "scgpt" else "none"  # scgpt embeds values
    cfg = ModelConfig(family=family, preset="small", vocab_size=V2_VOCAB, pooling="mean",
                      value_mode=value_mode, norm_placement=norm)
    with torch.device("meta"):
        model = get_model(cfg)
    stacks = sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.startswith(("encoder.", "decoder.", "enc_to_dec."))
    )
    assert non_embedding_params(cfg) == stacks


def test_flops_per_token_formula() -> None:
    cfg = resolve_preset(ModelConfig(preset="base", vocab_size=V2_VOCAB))
    n = non_embedding_params(cfg) - 2 * cfg.hidden_size  # final norm is not a matmul; ~0.002%
    flops = estimate_flops_per_token(cfg, 2048)
    assert flops == pytest.approx(6 * n + 12 * 12 * 768 * 2048, rel=1e-4)
    with_head = estimate_flops_per_token(cfg, 2048, predicted_fraction=0.15)
    assert with_head - flops == pytest.approx(6 * 768 * V2_VOCAB * 0.15)
    assert estimate_flops_per_token(cfg, 4096) > flops
    mae = dataclasses.replace(cfg, family="masked_autoencoder")
    assert estimate_flops_per_token(mae, 2048, visible_fraction=0.5) < estimate_flops_per_token(
        mae, 2048
    )
    with pytest.raises(ValueError, match="seq_len"):
        estimate_flops_per_token(cfg, 0)


def test_auto_pooling_is_mean_for_autoregressive_and_cls_otherwise() -> None:
    assert ModelConfig().pooling == "auto"
    for family in ("autoregressive", "masked_autoencoder", "transformer_encoder"):
        cfg = resolve_preset(ModelConfig(family=family, vocab_size=64, max_len=16))
        assert cfg.pooling == ("mean" if family == "autoregressive" else "cls")
        assert get_model(dataclasses.replace(cfg, pooling="auto")).config.pooling == cfg.pooling
