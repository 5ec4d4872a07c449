"""Masking strategy interface and the counter-based randomness every strategy draws from.

Masks are *dynamic* (new each epoch) yet a pure function of ``(seed, epoch, cell identity,
position)``: each cell gets a 32-bit key from a splitmix64 hash of ``(seed, epoch, cell id,
strategy)``, and token ``t`` of the cell draws ``lowbias32(key + t * golden)``. So a cell's mask
does not depend on which batch, worker or rank it lands in, a resumed run re-creates the masks of
the unbroken one, and the draw costs a handful of vectorised uint32 operations per token (no
per-cell generator objects, which would cost more than decoding the cell).

Strategies work on the padded [B, L] arrays in place (B = cells, L = padded length; column =
position in the cell). ``<pad>`` is always a special id, so padding is never selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from scforge.data.stream.config import MaskingConfig

_GOLDEN32 = np.uint32(0x9E3779B9)
_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
U16, U15 = np.uint32(16), np.uint32(15)


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 (Wellons) finaliser, in place on a uint32 array; returns it."""
    x ^= x >> U16
    x *= _M1
    x ^= x >> U15
    x *= _M2
    x ^= x >> U16
    return x


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cell_keys(seed: int, epoch: int, cell_ids: np.ndarray, stream: int) -> np.ndarray:
    """uint32 key per cell from ``(seed, epoch, global cell index, stream)``."""
    head = _splitmix64(np.array([seed, epoch, stream], dtype=np.uint64))
    salt = _splitmix64(head[:1] ^ _splitmix64(head[1:2] ^ _splitmix64(head[2:3])))
    z = _splitmix64(cell_ids.astype(np.uint64) ^ salt)
    return (z >> np.uint64(32)).astype(np.uint32)


def token_draws(keys: np.ndarray, width: int) -> np.ndarray:
    """uint32 [B, width] uniform draws: ``mix32(key[cell] + position * golden)``."""
    steps = np.arange(width, dtype=np.uint32) * _GOLDEN32
    return mix32(keys[:, None] + steps[None, :])


def threshold(p: float) -> int:
    """Draws ``< threshold(p)`` happen with probability ``p`` (exact to 2**-32)."""
    return int(round(p * 2**32))


def rehash(draws: np.ndarray, salt: int) -> np.ndarray:
    """An independent draw derived from an earlier one (for second decisions at few positions)."""
    return mix32(draws ^ np.uint32(salt))


@dataclass(frozen=True)
class KernelParams:
    """A strategy in the fused kernel's terms (see :func:`scforge.data.stream.fused.collate_batch`).

    Attributes:
        mode: ``MODE_NONE``, ``MODE_BERT`` or ``MODE_VALUE`` of :mod:`scforge.data.stream.fused`.
        t_select: draws below it select a token (:func:`threshold` of the probability).
        t_mask: bert: draws below it become ``<mask>``.
        t_random: bert: draws in ``[t_mask, t_random)`` become a random gene.
        mask_id: the ``<mask>`` id (-1 if none).
        genes: int64 ids random replacements are drawn from.
        fill_value: value masking: what hidden values become.
    """

    mode: int
    t_select: int = 0
    t_mask: int = 0
    t_random: int = 0
    mask_id: int = -1
    genes: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    fill_value: float = 0.0


@dataclass(frozen=True)
class Specials:
    """Token ids the loader must know: padding, masking and the never-masked specials."""

    pad: int
    mask: int
    vocab_size: int
    special_ids: tuple[int, ...]
    """Ids that are never masked nor drawn as random genes (``<pad>``, ``<mask>``, ``<cls>``,
    ``<eos>``, ...: every special the manifest's vocabulary lists)."""

    @classmethod
    def from_manifest(cls, specials: dict[str, int], vocab_size: int) -> Specials:
        if "<pad>" not in specials:
            raise ValueError(f"the shards' vocabulary has no <pad> token (specials: {specials}); "
                             "re-shard with a vocabulary that defines one")
        return cls(pad=int(specials["<pad>"]), mask=int(specials.get("<mask>", -1)),
                   vocab_size=int(vocab_size), special_ids=tuple(sorted(set(specials.values()))))

    def is_special_table(self) -> np.ndarray:
        """bool [vocab_size]: True at special ids (a lookup is faster than ``np.isin``)."""
        table = np.zeros(self.vocab_size, dtype=bool)
        table[list(self.special_ids)] = True
        return table


class MaskingStrategy:
    """Base class: subclasses set ``name`` and implement :meth:`apply`.

    Args:
        cfg: masking options.
        specials: special token ids of the shards' vocabulary.
        has_values: whether the shards carry per-token values.
    """

    name: ClassVar[str] = ""
    stream: ClassVar[int] = 0
    """Distinct hash stream per strategy, so switching strategy does not reuse positions."""
    outputs: ClassVar[tuple[tuple[str, str], ...]] = ()
    """``(Batch field, dtype)`` of the [B, L] arrays the strategy fills; dtype ``"ids"`` means
    the token id dtype (int64, the contract's). The collator allocates them (in shared memory
    when in a DataLoader worker)."""

    def __init__(self, cfg: MaskingConfig, specials: Specials, *, has_values: bool) -> None:
        self.cfg = cfg
        self.specials = specials
        self.has_values = has_values
        self._is_special = specials.is_special_table()

    def maskable(self, ids: np.ndarray) -> np.ndarray:
        """True at real gene tokens (never ``<cls>``/``<eos>``/``<pad>``/``<mask>``)."""
        lo, hi = self.specials.special_ids[0], self.specials.special_ids[-1]
        if hi - lo + 1 == len(self.specials.special_ids):  # one contiguous range: 2 compares
            return (ids < lo) | (ids > hi)
        return ~self._is_special[ids]

    def kernel_params(self) -> KernelParams | None:
        """What the fused batch kernel (:mod:`scforge.data.stream.fused`) needs to apply this
        strategy, or None: the collator then runs the NumPy path (:meth:`apply`). A strategy
        returns params only if the kernel reproduces its :meth:`apply` exactly (subclasses that
        override ``apply`` fall back to it)."""
        return None

    def apply(self, ids: np.ndarray, values: np.ndarray | None, draws: np.ndarray,
              out: dict[str, np.ndarray]) -> int:
        """Masks a padded batch in place; returns how many positions were selected.

        Args:
            ids: int64 [B, L] token ids, ``<pad>`` past each cell's end; modified in place.
            values: float32 [B, L] (0 past each cell's end) or None; modified in place.
            draws: uint32 [B, L] per-token uniform draws (see :func:`token_draws`).
            out: uninitialised [B, L] arrays for every field in :attr:`outputs`; the strategy
                must write every element.
        """
        raise NotImplementedError


def select(strategy: MaskingStrategy, ids: np.ndarray, draws: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions whose draw is ``< probability`` and whose token is maskable, and their draws.

    Works sparsely: one compare + ``flatnonzero`` over the batch, then only the ~``p`` selected
    candidates are looked at (boolean ``where``/``putmask`` over [B, L] cost several times more).
    """
    t = threshold(strategy.cfg.probability)
    flat_draws = draws.reshape(-1)
    cand = (np.arange(flat_draws.size) if t >= 2**32
            else np.flatnonzero(flat_draws < np.uint32(t)))
    keep = strategy.maskable(ids.reshape(-1)[cand])
    pos = cand[keep]
    return pos, flat_draws[pos]
