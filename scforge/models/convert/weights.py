"""Reading published weight files without unpickling anything but tensors.

``.safetensors`` files are read by safetensors; ``.bin`` / ``.pt`` / ``.pth`` files only through
``torch.load(..., weights_only=True)``, which refuses every object that is not a tensor, a
container of tensors or a plain number/string. Anything else is refused with an error that says
how to convert the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from scforge.models.convert import ConversionError

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
NESTED_KEYS = ("state_dict", "model_state_dict", "model")
"""Top-level keys some trainers wrap a state dict in; looked into when nothing else is there."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def load_torch_weights(file: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file, loaded with ``weights_only=True`` on the CPU.

    Args:
        file: the ``.bin`` / ``.pt`` / ``.pth`` file.
        mmap: map the tensors instead of reading them (cheap when only shapes are needed; files
            in the old, non-zip format are read normally).

    Raises:
        ConversionError: the file holds objects ``weights_only`` refuses, or no state dict.
    """
    file = Path(file)
    try:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap or None)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip errors, truncated files
        raise ConversionError(
            f"{file}: torch.load(weights_only=True) refused it ({_first_line(exc)}); scforge "
            "loads tensors only, never pickled objects: re-save it as a plain state dict "
            "(torch.save(model.state_dict(), ...)) or as safetensors") from None
    if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{file} holds a {type(obj).__name__}, not a state dict of "
                              "tensors; save model.state_dict()")
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise ConversionError(f"{file}: entries {bad[:3]} are not tensors; save a plain "
                              "model.state_dict()")
    return {str(k): v for k, v in obj.items()}


def load_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file, on the CPU."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as exc:  # noqa: BLE001 - header / truncation errors of safetensors
        raise ConversionError(f"{file} is not a readable safetensors file ({_first_line(exc)})"
                              ) from None


def load_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from one weight file, by suffix (see the module docstring)."""
    file = Path(file)
    if file.suffix == ".safetensors":
        return load_safetensors(file)
    if file.suffix in TORCH_SUFFIXES:
        return load_torch_weights(file)
    raise ConversionError(f"{file}: unknown weight format {file.suffix!r}; scforge reads "
                          ".safetensors, or .bin/.pt/.pth through torch.load(weights_only=True)")


def load_sharded(index: str | Path) -> dict[str, torch.Tensor]:
    """All tensors named by a Hugging Face ``*.index.json`` (``weight_map``: name -> shard)."""
    index = Path(index)
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (KeyError, ValueError, AttributeError) as exc:
        raise ConversionError(f"{index} is not a weight index ({_first_line(exc)})") from None
    state: dict[str, torch.Tensor] = {}
    for name in files:
        shard = index.parent / name
        if not shard.is_file():
            raise FileNotFoundError(f"{shard} (listed in {index.name}) does not exist; download "
                                    "every shard of the checkpoint")
        state.update(load_weights(shard))
    return state
