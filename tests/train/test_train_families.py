"""Every model family x every tokenizer it supports trains through the real trainer.

30 optimizer steps of the debug model on pbmc shards (256 tokens; autoregressive reads 96), one process, fp32, ZeRO 0/1:
the mean loss of the last 5 steps must be below that of the first 5.
"""

from __future__ import annotations

import pytest
from _train_util import small_config

from scforge.models import list_models
from scforge.training import train

# scgpt embeds and predicts values: it has no rank-value (valueless) form.
CASES = [(family, tok) for family in list_models() for tok in ("rank", "binned", "continuous")
         if not (family == "scgpt" and tok == "rank")]


@pytest.mark.parametrize(("family", "tokenizer"), CASES)
def test_family_trains_and_loss_decreases(family, tokenizer, train_shards, tmp_path):
    extra: dict[str, object] = {"train.zero_stage": 1 if tokenizer == "binned" else 0}
    if family == "autoregressive":
        # Every position predicts the next gene over the whole vocabulary (20-60k logits per
        # token): shorter rows keep the run near the other families' few seconds.
        extra.update({"data.stream.max_len": 96,  # pooling: the recipe's auto -> mean
                      "train.micro_batch_size": 4})
    cfg = small_config(train_shards(tokenizer), tmp_path / "run", **extra)
    cfg.train.export = False
    result = train(cfg)
    losses = result.losses
    assert result.step == 30 and len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"{family}/{tokenizer}: loss did not decrease ({first:.4f} -> {last:.4f})"
