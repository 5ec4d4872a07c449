"""Export: ZeRO-3 run -> consolidated safetensors -> reload without DeepSpeed -> same embeddings."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from _train_util import PYTHON, REPO, small_config, subprocess_env

from scforge.data.stream import ShardStream, StreamConfig
from scforge.training import Trainer, load_pretrained, read_pretrained_info


def _fixed_batch(shards, value_mode: str):
    masking = "value" if value_mode != "none" else "bert"
    cfg = StreamConfig(batch_size=6, max_len=64, shuffle=False, seed=3)
    cfg.masking.name = masking
    stream = ShardStream(shards, cfg, rank=0, world_size=1)
    return next(iter(stream.iter_workers(1)))


@pytest.mark.parametrize(("family", "tokenizer"), [("transformer_encoder", "rank"),
                                                   ("masked_autoencoder", "binned")])
def test_zero3_export_reloads_without_deepspeed(family, tokenizer, train_shards, tmp_path):
    shards = train_shards(tokenizer)
    cfg = small_config(shards, tmp_path / "run", **{
        "model.family": family, "train.zero_stage": 3, "train.max_steps": 4,
        "train.micro_batch_size": 4, "data.stream.max_len": 64})
    trainer = Trainer(cfg)
    result = trainer.fit()
    export = result.export_dir
    assert export is not None and (export / "model.safetensors").is_file()
    info = read_pretrained_info(export)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert info["vocab"]["size"] == manifest["vocab"]["size"]
    assert info["vocab_hash"] == manifest["vocab_hash"] and info["step"] == 4

    model = load_pretrained(export)
    assert model.config.value_mode == ("binned" if tokenizer == "binned" else "none")
    if model.config.tie_embeddings:
        assert model.gene_head.decoder.weight is model.embed.gene.weight  # re-tied on load
    batch = _fixed_batch(shards, model.config.value_mode)
    with torch.no_grad():
        emb = model.encode(batch)
    assert emb.shape == (6, model.config.hidden_size) and torch.isfinite(emb).all()

    # The trained ZeRO-3 module itself (its partitions gathered) embeds the batch identically.
    import deepspeed

    trained = trainer.engine.module.eval()
    with deepspeed.zero.GatheredParameters(list(trained.parameters())), torch.no_grad():
        torch.testing.assert_close(trained.encode(batch), emb, rtol=0, atol=0)

    # A fresh interpreter that never imports DeepSpeed gets the identical embeddings.
    from safetensors.torch import load_file, save_file

    out = tmp_path / "emb.safetensors"

    batch_file = tmp_path / "batch.safetensors"
    tensors = {k: v for k, v in vars(batch).items() if torch.is_tensor(v)}
    save_file(tensors, str(batch_file))
    script = (
        "import sys; from safetensors.torch import load_file, save_file; import torch\n"
        "from scforge.contracts import Batch; from scforge.training import load_pretrained\n"
        f"m = load_pretrained({str(export)!r}); b = Batch(**load_file({str(batch_file)!r}))\n"
        "with torch.no_grad(): e = m.encode(b)\n"
        f"save_file({{'e': e.contiguous()}}, {str(out)!r})\n"
        "assert 'deepspeed' not in sys.modules, 'load_pretrained imported deepspeed'\n")
    subprocess.run([PYTHON, "-c", script], check=True, cwd=REPO, env=subprocess_env(),
                   capture_output=True, timeout=120)
    torch.testing.assert_close(load_file(str(out))["e"], emb, rtol=0, atol=0)
