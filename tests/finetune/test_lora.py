"""LoRA: only adapters (and the head) train; merging gives the same function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scforge.eval.tokenize import pad_batch
from scforge.finetune import FinetuneModel, apply_lora, lora_parameters, merge_lora
from scforge.finetune.train import set_trainable
from scforge.training.export import load_pretrained


def _batch(vocab: int = 20275):
    rng = np.random.default_rng(0)
    cells = [np.r_[2, rng.choice(np.arange(4, vocab), n, replace=False), 3]
             for n in (20, 35, 50, 12)]
    return pad_batch(cells, None, max_len=64, pad_id=0, eos_id=3)


@pytest.mark.parametrize("backend", ["peft", "builtin"])
def test_lora_trains_only_adapters(debug_export, backend):
    torch.manual_seed(0)
    model = FinetuneModel(load_pretrained(debug_export), 3, dropout=0.0)
    n_base = sum(p.numel() for p in model.parameters())
    names = apply_lora(model.encoder, targets=["qkv", "out"], rank=4, alpha=8, backend=backend)
    assert len(names) == 2 * model.config.num_layers
    n = set_trainable(model, 99, lora=True)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k or k.startswith("head.") for k in trainable)
    assert n == sum(p.numel() for p in lora_parameters(model)) + sum(
        p.numel() for p in model.head.parameters())
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    batch = _batch()
    with torch.no_grad():
        out0 = model(batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert changed and changed <= trainable
    assert any("lora_b" in k.lower() for k in changed)  # B left zero: adapters really moved
    # rank 4 on every qkv (40 -> 120) and out (40 -> 40) projection: 4*(40+120) + 4*(40+40)
    assert sum(p.numel() for p in lora_parameters(model)) == model.config.num_layers * 960
    model.eval()
    with torch.no_grad():
        adapted = model(batch)
        assert not torch.allclose(adapted, out0)
        assert merge_lora(model) == len(names)
        torch.testing.assert_close(model(batch), adapted, rtol=1e-5, atol=1e-5)
    assert not lora_parameters(model)  # merged back into plain Linear layers
    assert sum(p.numel() for p in model.parameters()) == n_base


@pytest.mark.parametrize("backend", ["peft", "builtin"])
def test_lora_unknown_target(debug_export, backend):
    with pytest.raises(ValueError, match="available names"):
        apply_lora(load_pretrained(debug_export), targets=["nope"], rank=2, alpha=2,
                   backend=backend)


def test_lora_backend_validated():
    from scforge.config.loader import ConfigError, load_config
    from scforge.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match="lora.backend"):
        load_config(FinetuneConfig, [], ["lora.backend=nope"])
