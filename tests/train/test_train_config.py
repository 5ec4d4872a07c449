"""Invalid training configs fail fast, before any model or process group exists, naming the key."""

from __future__ import annotations

import json

import pytest
from _train_util import DEBUG, REPO, small_config, small_overrides

from scforge.config.loader import ConfigError
from scforge.training import TrainConfig, load_train_config
from scforge.training.data import bind_config
from scforge.training.deepspeed_config import deepspeed_config
from scforge.training.optim import lr_multiplier

BAD = [
    ("model.num_heads=7", "model.num_heads"),
    ("model.pooling=max", "model.pooling"),
    ("model.family=bert", "model.family"),
    ("train.zero_stage=4", "train.zero_stage"),
    ("train.precision=fp8", "train.precision"),
    ("train.micro_batch_size=0", "train.micro_batch_size"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.clip_grad=-1", "train.clip_grad"),
    ("train.resume=/nonexistent/ckpt", "train.resume"),
    ("train.early_stopping.mode=up", "train.early_stopping.mode"),
    ("train.early_stopping.monitor=loss", "train.early_stopping.monitor"),
    ("optim.schedule=step", "optim.schedule"),
    ("optim.lr=0", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
    ("data.stream.batch_size=32", "data.stream.batch_size"),
    ("data.stream.max_len=1", "data.stream.max_len"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("wandb.mode=sometimes", "wandb.mode"),
    ("train.bogus=1", "train.bogus"),
    ("model.hidden=64", "model.hidden"),
    ("train.max_steps=many", "train.max_steps"),
]


@pytest.mark.parametrize(("override", "key"), BAD)
def test_invalid_value_names_the_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config([DEBUG], [*small_overrides(tmp_path, tmp_path / "run"), override])


def test_missing_train_dir_and_validation_without_data(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train"):
        TrainConfig().validate()
    with pytest.raises(ConfigError, match=r"train\.val_every"):
        load_train_config([DEBUG], [*small_overrides(tmp_path, tmp_path), "train.val_every=5"])
    with pytest.raises(ConfigError, match=r"early_stopping\.patience"):
        load_train_config([DEBUG], [*small_overrides(tmp_path, tmp_path),
                                    "train.early_stopping.patience=2"])


def test_every_recipe_loads():
    for recipe in sorted((REPO / "configs" / "train").glob("*.yaml")):
        cfg = load_train_config([recipe])
        assert cfg.train.max_steps > 0, recipe.name


@pytest.mark.parametrize(("override", "key"), [
    ("model.vocab_size=1000", "model.vocab_size"),
    ("model.value_mode=binned", "model.value_mode"),
    ("model.max_len=64", "model.max_len"),
    ("data.stream.masking.name=value", "masking.name"),
])
def test_config_incompatible_with_shards_fails_at_bind(override, key, train_shards, tmp_path):
    cfg = load_train_config([DEBUG], [*small_overrides(train_shards("rank"), tmp_path), override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        bind_config(cfg)


def test_bind_derives_model_from_each_tokenizer(train_shards, tmp_path):
    expected = {"rank": ("none", "bert"), "binned": ("binned", "value"),
                "continuous": ("continuous", "value")}
    for kind, (mode, masking) in expected.items():
        shards = train_shards(kind)
        manifest = json.loads((shards / "manifest.json").read_text())
        bound, _ = bind_config(small_config(shards, tmp_path))
        specials = manifest["vocab"]["specials"]
        assert bound.model.value_mode == mode
        assert bound.data.stream.masking.name == masking
        assert bound.model.vocab_size == manifest["vocab"]["size"]
        assert (bound.model.pad_token_id, bound.model.mask_token_id, bound.model.cls_token_id) == (
            specials["<pad>"], specials["<mask>"], specials["<cls>"])
        assert bound.model.hidden_size == 40  # the preset is resolved in the run's config.yaml
        if kind == "binned":
            assert bound.model.n_bins == manifest["tokenizer"]["options"]["n_bins"]
    ar, _ = bind_config(small_config(train_shards("rank"), tmp_path,
                                     **{"model.family": "autoregressive"}))
    assert ar.data.stream.masking.name == "none"
    assert ar.model.pooling == "mean"  # the recipe's pooling=auto, resolved for causal attention


def test_val_fraction_holds_out_whole_shards(train_shards, tmp_path):
    from scforge.training.data import split_sources

    cfg = small_config(train_shards("rank"), tmp_path, **{"data.val_fraction": 0.2})
    train_src, val_src = split_sources(cfg)
    assert len(val_src) == 2 and len(train_src) == 4  # 6 shards; ceil(0.2 * 6) held out
    assert not set(train_src) & set(val_src)


def test_deepspeed_config_is_generated_from_the_train_config(tmp_path):
    cfg = load_train_config([DEBUG], [*small_overrides(tmp_path, tmp_path), "train.zero_stage=3",
                                      "train.precision=bf16", "train.grad_accum=4",
                                      "train.clip_grad=0.5"])
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == 8 * 4 * 8
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    assert "optimizer" not in ds  # the trainer passes a torch AdamW instance (no JIT build)
    assert deepspeed_config(cfg, world_size=1, with_optimizer=True)["optimizer"]["params"][
        "torch_adam"] is True
    json.dumps(ds)


def test_lr_schedule_warmup_then_decay():
    kw = {"warmup": 10, "total": 110, "min_ratio": 0.1}
    assert lr_multiplier(0, schedule="cosine", **kw) == pytest.approx(1 / 11)
    assert lr_multiplier(9, schedule="cosine", **kw) == pytest.approx(10 / 11)
    assert lr_multiplier(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_multiplier(60, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_multiplier(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_multiplier(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_multiplier(500, schedule="linear", **kw) == pytest.approx(0.1)
    assert lr_multiplier(500, schedule="constant", **kw) == 1.0


def test_cli_reports_config_errors_and_prints_the_resolved_config(tmp_path, capsys):
    from scforge.training import main

    assert main(["--config", str(DEBUG), "train.zero_stage=9"]) == 2
    assert "train.zero_stage" in capsys.readouterr().err
    assert main(["--config", str(DEBUG), "--print-config", "train.max_steps=7",
                 "--local_rank=0"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "zero_stage: 0" in printed
