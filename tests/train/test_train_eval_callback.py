"""In-training evaluation: ``eval.every`` runs linear_probe on labelled pbmc cells mid-run."""

from __future__ import annotations

import json

import pytest
from _train_util import small_config

from scforge.config.loader import ConfigError
from scforge.training import train
from scforge.training.trainer import Trainer


def test_eval_callback_logs_scores_and_leaves_training_untouched(train_shards, pbmc_path,
                                                                  tmp_path):
    common = {"train.max_steps": 3, "model.dropout": 0.1}
    plain = train(small_config(train_shards("rank"), tmp_path / "plain", **common))
    out = tmp_path / "eval"
    cfg = small_config(train_shards("rank"), out, **common, **{
        "eval.every": 2, "eval.data": pbmc_path, "eval.max_cells": 200,
        "eval.tasks": "[linear_probe]"})
    result = train(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps, and after the last one
    keys = {k for k in evals[0] if k.startswith("eval/linear_probe/")}
    assert {"eval/linear_probe/accuracy", "eval/linear_probe/macro_f1"} <= keys, evals[0]
    for r in evals:
        assert 0.0 <= r["eval/linear_probe/accuracy"] <= 1.0
        assert r["eval/linear_probe/n_train"] + r["eval/linear_probe/n_test"] == 200
        assert r["eval_time_s"] > 0
    assert result.callbacks["eval"] == {k: v for k, v in evals[-1].items() if k in keys}
    # The callback runs under a forked RNG: dropout draws, hence losses, are unchanged.
    assert result.losses == plain.losses


def test_eval_callback_config_errors_name_the_key(train_shards, pbmc_path, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.data"):
        small_config(train_shards("rank"), tmp_path, **{"eval.every": 2})
    cfg = small_config(train_shards("rank"), tmp_path, **{
        "eval.every": 2, "eval.data": pbmc_path, "eval.tasks": "[no_such_task]"})
    with pytest.raises(ConfigError, match=r"eval\.tasks"):
        Trainer(cfg)
    cfg = small_config(train_shards("rank"), tmp_path, **{
        "eval.every": 2, "eval.data": pbmc_path, "eval.label_key": "celltype"})
    with pytest.raises(ConfigError, match=r"eval\.label_key"):
        Trainer(cfg)
