"""Binds a :class:`TrainConfig` to its shards and builds the train/validation streams.

The shards' manifest is the truth about the tokens: vocabulary size, special-token ids, the
tokenizer (hence the value mode) and the longest sequence. :func:`bind_config` fills every
"derive it from the data" value of the config from it and refuses combinations that would train
garbage or crash mid-run (a vocabulary smaller than the shards', a value mode the shards cannot
feed, sequences longer than the position table), naming the key to change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from scforge.config.loader import ConfigError
from scforge.data.stream import ShardSet, ShardStream, StatefulLoader, StreamConfig
from scforge.models.config import ModelConfig, resolve_preset
from scforge.training.config import AUTO, TrainConfig

VALUE_MODE_OF_STRATEGY = {
    "rank_value": "none",
    "binned_expression": "binned",
    "continuous_projection": "continuous",
}


def shards_value_mode(manifest: dict[str, Any]) -> str:
    """The model value mode the shards' tokenizer implies."""
    tok = manifest["tokenizer"]
    mode = VALUE_MODE_OF_STRATEGY.get(str(tok.get("strategy")))
    if mode is not None:
        return mode
    dtype = tok.get("value_dtype")
    if dtype is None:
        return "none"
    return "binned" if str(dtype).startswith("uint") else "continuous"


def shards_n_bins(manifest: dict[str, Any]) -> int | None:
    """Bin count of a binned tokenizer (None for other tokenizers)."""
    bins = manifest["tokenizer"].get("options", {}).get("n_bins")
    return int(bins) if bins is not None else None


def split_sources(cfg: TrainConfig) -> tuple[str | list[str], str | list[str] | None]:
    """Training and validation sources: ``data.val``, or the last shards of ``data.train``.

    Holding out whole shards (not cells) keeps both sides readable as ordinary shard lists of
    one manifest, and a held-out shard never leaks cells into training.
    """
    d = cfg.data
    if d.val:
        return d.train, d.val
    if not d.val_fraction:
        return d.train, None
    urls = ShardSet(d.train).urls
    k = max(1, math.ceil(d.val_fraction * len(urls)))
    if k >= len(urls):
        raise ConfigError(f"data.val_fraction={d.val_fraction} holds out {k} of the {len(urls)} "
                          f"shards in {d.train!r}, leaving none to train on; lower it, re-shard "
                          "with smaller shards (shard.cells_per_shard), or set data.val")
    return urls[:-k], urls[-k:]


def bind_model(model: ModelConfig, manifest: dict[str, Any], *, seq_len: int,
               where: str) -> ModelConfig:
    """Fills ``vocab_size``, ``value_mode``, ``n_bins`` and special ids from ``manifest``.

    Preset sizes are resolved too, so the run directory's ``config.yaml`` states every dimension.

    Args:
        model: the configured model (``vocab_size=0`` / ``value_mode="auto"`` are derived).
        manifest: the training shards' manifest.
        seq_len: longest sequence the loader will deliver.
        where: the shard location, for error messages.

    Raises:
        ConfigError: the config cannot train on these shards; the message names the key.
    """
    vocab = manifest["vocab"]
    size = int(vocab["size"])
    name = vocab.get("name", "?")
    if model.vocab_size == 0:
        vocab_size = size
    elif model.vocab_size < size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than the vocabulary of "
                          f"the shards in {where!r} ({name}, {size} tokens); set "
                          f"model.vocab_size=0 to take it from the shards, or >= {size}")
    else:
        vocab_size = model.vocab_size
    mode = shards_value_mode(manifest)
    strategy = manifest["tokenizer"].get("strategy")
    value_mode = mode if model.value_mode == AUTO else model.value_mode
    if value_mode != mode:
        raise ConfigError(f"model.value_mode={model.value_mode!r} does not match the shards in "
                          f"{where!r} (tokenizer {strategy}, which needs value_mode={mode!r}); set "
                          f"model.value_mode=auto or {mode}")
    n_bins = model.n_bins
    shard_bins = shards_n_bins(manifest)
    if value_mode == "binned" and shard_bins is not None:
        if model.value_mode == AUTO:
            n_bins = shard_bins
        elif model.n_bins < shard_bins:
            raise ConfigError(f"model.n_bins={model.n_bins} is smaller than the shards' "
                              f"{shard_bins} bins ({where!r}); set model.n_bins={shard_bins}")
    if seq_len > model.max_len:
        raise ConfigError(f"the loader delivers sequences of up to {seq_len} tokens but "
                          f"model.max_len={model.max_len}; raise model.max_len or set "
                          f"data.stream.max_len <= {model.max_len}")
    specials = vocab.get("specials", {})
    ids = {key: int(specials[tok]) for key, tok in (("pad_token_id", "<pad>"),
                                                     ("mask_token_id", "<mask>"),
                                                     ("cls_token_id", "<cls>")) if tok in specials}
    bound = dataclasses.replace(resolve_preset(model), vocab_size=vocab_size, value_mode=value_mode,
                                n_bins=n_bins, **ids)
    try:
        bound.validate(require_vocab=True)
    except ValueError as e:
        raise ConfigError(f"{e} (after binding to the shards in {where!r})") from None
    return bound


def masking_name(cfg: TrainConfig, manifest: dict[str, Any]) -> str:
    """The masking strategy: the configured one, or the family's and tokenizer's natural one."""
    name = cfg.data.stream.masking.name
    has_values = manifest["tokenizer"].get("value_dtype") is not None
    if name == AUTO:
        if cfg.model.family == "autoregressive":
            return "none"
        return "value" if has_values and cfg.model.value_mode != "none" else "bert"
    if name == "value" and not has_values:
        raise ConfigError("data.stream.masking.name='value' needs shards with values; these are "
                          f"{manifest['tokenizer'].get('strategy')} shards: use bert or auto")
    return name


def bind_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's resolved config (model and loader filled from the data) and the manifest.

    Raises:
        ConfigError: see :func:`bind_model`; also a validation set with another vocabulary.
    """
    train_src, val_src = split_sources(cfg)
    shards = ShardSet(train_src)
    manifest = shards.manifest
    if isinstance(cfg.data.val, str) and cfg.data.val:
        val_manifest = ShardSet(cfg.data.val).manifest
        if val_manifest.get("vocab_hash") != manifest.get("vocab_hash"):
            raise ConfigError(f"data.val={cfg.data.val!r} was tokenized with another vocabulary "
                              f"than data.train={cfg.data.train!r}; re-shard it with the same "
                              "vocabulary")
        if shards_value_mode(val_manifest) != shards_value_mode(manifest):
            raise ConfigError(f"data.val={cfg.data.val!r} uses another tokenizer than data.train")
    stream = cfg.data.stream
    seq_len = stream.max_len or shards.max_length
    masking = dataclasses.replace(stream.masking, name=masking_name(cfg, manifest))
    stream = dataclasses.replace(stream, batch_size=cfg.train.micro_batch_size, max_len=seq_len,
                                 masking=masking)
    model = dataclasses.replace(cfg.model,
                                gradient_checkpointing=cfg.model.gradient_checkpointing
                                or cfg.train.gradient_checkpointing)
    model = bind_model(model, manifest, seq_len=seq_len, where=str(cfg.data.train))
    if masking.name == "value" and model.value_mode == "none":
        raise ConfigError("data.stream.masking.name='value' hides values but model.value_mode="
                          "'none' reads none; use masking bert/auto or a valued model")
    data = dataclasses.replace(cfg.data, stream=stream)
    return dataclasses.replace(cfg, data=data, model=model), manifest


def make_train_loader(cfg: TrainConfig, *, rank: int, world_size: int) -> StatefulLoader:
    """The resumable training loader of this rank (its share of every epoch)."""
    train_src, _ = split_sources(cfg)
    stream = ShardStream(train_src, cfg.data.stream, rank=rank, world_size=world_size)
    return StatefulLoader(stream, num_workers=cfg.data.num_workers,
                          transfer_batches=cfg.data.transfer_batches)


def make_val_stream(cfg: TrainConfig, *, rank: int, world_size: int) -> ShardStream | None:
    """This rank's validation stream (unshuffled, so every check sees the same cells)."""
    _, val_src = split_sources(cfg)
    if val_src is None:
        return None
    stream_cfg: StreamConfig = dataclasses.replace(cfg.data.stream, shuffle=False)
    return ShardStream(val_src, stream_cfg, rank=rank, world_size=world_size)
