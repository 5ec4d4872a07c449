"""Configuration schema of the streaming loader (``StreamConfig``).

Dataclasses are the truth; ``configs/loader/*.yaml`` are recipes loaded with
``scforge.config.load_config(StreamConfig, [recipe], overrides)``, which merges them through
OmegaConf so a misspelled key fails at load time, then calls :meth:`StreamConfig.validate`.

The schema lives next to the loader (not in ``scforge/config/schema.py``) only because the loader
owns it; it imports nothing but the config error type, so moving it later is mechanical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scforge.config.loader import ConfigError

UNEVEN_RULES = ("pad", "drop_last")
VERIFY_MODES = ("always", "first", "never")
ERROR_POLICIES = ("raise", "skip")


@dataclass
class MaskingConfig:
    """Dynamic masking applied inside the loader (a fresh mask each epoch, seeded per cell)."""

    name: str = "bert"
    """Strategy from the masking registry: ``bert`` (gene ids), ``value`` (expression values)
    or ``none`` (autoregressive: no masking, no labels)."""
    probability: float = 0.15
    """Fraction of real gene tokens selected (``<cls>``/``<eos>``/``<pad>`` never are)."""
    mask_fraction: float = 0.8
    """``bert``: of the selected tokens, the fraction replaced by ``<mask>``."""
    random_fraction: float = 0.1
    """``bert``: of the selected tokens, the fraction replaced by a random gene; the remaining
    ``1 - mask_fraction - random_fraction`` keep their id (and are still predicted)."""
    fill_value: float = 0.0
    """``value``: what hidden values are replaced by (models must not read them anyway)."""


@dataclass
class BucketingConfig:
    """Length bucketing: cells of similar length share a batch, so less compute is padding."""

    enabled: bool = True
    """Group cells by length inside each shuffle window (Geneformer's length-grouped sampler);
    batch order is then shuffled, so training still sees lengths in random order."""
    group_batches: int = 0
    """Sort groups of this many batches by length (HF ``LengthGroupedSampler`` uses 50);
    0 sorts the whole shuffle window (least padding)."""


@dataclass
class StreamConfig:
    """Everything the streaming loader needs besides the shard location and the world layout."""

    seed: int = 0
    """Seeds shard order, shuffle windows and masks: the stream is a pure function of it."""
    shuffle: bool = True
    """Shuffle shard order (per epoch) and cells within each shuffle window."""
    shuffle_buffer: int = 8192
    """Cells per shuffle window (rounded up to a multiple of batch_size); bounds memory to about
    ``shuffle_buffer * tokens per cell * 2`` bytes per worker."""
    batch_size: int = 64
    """Cells per batch (per rank). Only the last batch of an epoch can be smaller."""
    uneven: str = "pad"
    """How cells are balanced across ranks when ``world_size`` does not divide the corpus:
    ``pad`` repeats cells from the start of the epoch's order (at most ``world_size - 1``
    duplicates, every cell seen: torch's DistributedSampler default); ``drop_last`` drops the
    tail of the shuffled order (fewer than ``world_size`` cells, different ones each epoch)."""
    max_len: int = 0
    """Pad/truncate to at most this many tokens; 0 = the shards' ``tokenizer.max_length``."""
    keep_eos: bool = True
    """When truncating a cell that ends in ``<eos>``, keep ``<eos>`` as its last token (first
    ``max_len - 1`` tokens + ``<eos>``), so every sequence still ends with it."""
    verify: str = "first"
    """sha256 check of each shard: ``always`` (every time a worker opens it), ``first`` (once
    per training process: workers report what they checked, so later epochs' workers skip it)
    or ``never`` (blocks are still checked for consistency when decoded)."""
    on_error: str = "raise"
    """Unreadable shard: ``raise`` (error naming the shard) or ``skip`` (counted in
    ``metrics``; its cells are replaced by copies of readable cells of the same window so every
    rank still yields the same number of batches)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    bucketing: BucketingConfig = field(default_factory=BucketingConfig)

    def validate(self) -> None:
        """Checks ranges and enumerations the type system cannot."""
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer={self.shuffle_buffer} must be >= 1 (cells)")
        if self.max_len < 0 or 0 < self.max_len < 2:
            raise ConfigError(f"max_len={self.max_len}; use 0 (shards' max_length) or >= 2")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")
        for key, val, allowed in (("uneven", self.uneven, UNEVEN_RULES),
                                  ("verify", self.verify, VERIFY_MODES),
                                  ("on_error", self.on_error, ERROR_POLICIES)):
            if val not in allowed:
                raise ConfigError(f"{key}={val!r}; choose one of {list(allowed)}")
        m = self.masking
        if not 0.0 <= m.probability <= 1.0:
            raise ConfigError(f"masking.probability={m.probability} must be in [0, 1]")
        if m.mask_fraction < 0 or m.random_fraction < 0 or m.mask_fraction + m.random_fraction > 1:
            raise ConfigError(
                f"masking.mask_fraction={m.mask_fraction} and masking.random_fraction="
                f"{m.random_fraction} must be >= 0 and sum to <= 1 (the rest stays unchanged)")
        if self.bucketing.group_batches < 0:
            raise ConfigError(f"bucketing.group_batches={self.bucketing.group_batches} must be "
                              ">= 0 (0 = whole shuffle window)")
