"""JSONL metrics carry the required fields; validation, early stopping and the run directory."""

from __future__ import annotations

import json

import yaml
from _train_util import small_config

from scforge.training import train

TRAIN_FIELDS = {"step", "epoch", "loss", "lr", "grad_norm", "cells_per_s", "tokens_per_s",
                "padded_tokens_per_s", "pad_fraction", "mfu", "step_time_s", "rss_gb",
                "cuda_max_alloc_gb", "mlm_loss", "mlm_acc"}


def test_jsonl_fields_validation_early_stop_and_run_files(train_shards, tmp_path):
    out = tmp_path / "run"
    cfg = small_config(train_shards("rank"), out, **{
        "train.max_steps": 12, "train.val_every": 2, "train.val_batches": 2,
        "data.val_fraction": 0.2, "train.early_stopping.patience": 1,
        # Any change smaller than 100 counts as no improvement: the second check stops the run.
        "train.early_stopping.min_delta": 100.0, "train.peak_tflops": 0.05,
        "wandb.enabled": True, "wandb.mode": "offline"})
    result = train(cfg)
    assert result.stopped_early and result.step == 4

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    for r in train_recs:
        assert set(r) >= TRAIN_FIELDS, TRAIN_FIELDS - set(r)
        assert r["cells_per_s"] > 0 and r["tokens_per_s"] > 0 and r["grad_norm"] > 0
        assert 0.0 <= r["pad_fraction"] < 1.0 and r["rss_gb"] > 0
        assert r["mfu"] > 0  # peak_tflops given: MFU is estimated
        assert r["tokens_per_s"] <= r["padded_tokens_per_s"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and val[1]["bad_checks"] == 1
    assert {"val_loss", "val_mlm_loss", "val_mlm_acc"} <= set(val[0])

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["vocab_size"] > 0 and resolved["model"]["value_mode"] == "none"
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == 8
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "deepspeed"} <= set(env["versions"]) and "git" in env
    assert (out / "export" / "model.safetensors").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "wandb did not write an offline run"


def test_rank0_progress_bar(train_shards, tmp_path, capfd):
    cfg = small_config(train_shards("rank"), tmp_path / "run", **{
        "train.max_steps": 3, "train.progress": True, "train.export": False})
    train(cfg)
    err = capfd.readouterr().err
    assert "train" in err and "3/3" in err and "loss=" in err, err[-500:]
