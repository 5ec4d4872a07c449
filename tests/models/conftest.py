"""Fixtures for model tests: tiny configs and random, padded, masked batches on CPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scforge.contracts import IGNORE_INDEX, Batch
from scforge.models import ModelConfig

VOCAB = 40
N_BINS = 11
PAD, MASK, CLS = 0, 1, 2


def tiny_config(family: str = "transformer_encoder", **overrides: object) -> ModelConfig:
    """A ~30k-parameter config: every code path, milliseconds per step."""
    fields: dict[str, object] = dict(
        family=family,
        preset="none",
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        dropout=0.0,
        max_len=32,
        n_bins=N_BINS,
        pooling="mean" if family == "autoregressive" else "cls",
        decoder_layers=1,
    )
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


def random_batch(
    *,
    value_mode: str = "none",
    batch_size: int = 6,
    length: int = 16,
    mask_prob: float = 0.3,
    lengths: list[int] | None = None,
    seed: int = 0,
) -> Batch:
    """Right-padded cells starting with <cls>, with gene-id and (if valued) value masking."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=g).tolist()
        lengths[0] = length  # one full row, so the padded length is exactly ``length``
    attention_mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    genes = torch.randint(CLS + 1, VOCAB, (batch_size, length), generator=g)
    genes[:, 0] = CLS
    genes = genes.masked_fill(~attention_mask, PAD)
    maskable = attention_mask.clone()
    maskable[:, 0] = False  # never mask <cls>
    id_mask = maskable & (torch.rand(batch_size, length, generator=g) < mask_prob)
    labels = torch.where(id_mask, genes, torch.full_like(genes, IGNORE_INDEX))
    input_ids = genes.masked_fill(id_mask, MASK)
    values = value_labels = value_mask = None
    if value_mode != "none":
        if value_mode == "binned":
            full = torch.randint(1, N_BINS, (batch_size, length), generator=g).float()
        else:
            full = torch.log1p(torch.rand(batch_size, length, generator=g) * 20)
        full = full.masked_fill(~attention_mask, 0.0)
        value_mask = maskable & (torch.rand(batch_size, length, generator=g) < mask_prob)
        values, value_labels = full.masked_fill(value_mask, 0.0), full
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        values=values,
        labels=labels,
        value_labels=value_labels,
        value_mask=value_mask,
        cell_ids=[f"cell{i}" for i in range(batch_size)],
    )


@pytest.fixture
def make_batch() -> Callable[..., Batch]:
    return random_batch


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    return tiny_config


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
