"""Consolidated, DeepSpeed-free model export: ``model.safetensors`` + ``config.json``.

``export/`` of a run holds everything needed to rebuild the model anywhere with plain PyTorch:
the fp32 weights (consolidated from ZeRO partitions when needed), the model config, and the
vocabulary/tokenizer description from the shards' manifest, so a downstream user tokenizes new
cells exactly like the training data. :func:`load_pretrained` is the reader.

Tied weights (the gene embedding shared with the MLM output projection) are one tensor under two
names; safetensors refuses to store aliases, so :func:`safetensors.torch.save_model` drops the
duplicate name and :func:`safetensors.torch.load_model` re-ties it on load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from scforge.fsutil import replacing, write_text_atomic
from scforge.models import ModelConfig, SingleCellModel, count_parameters, get_model

FORMAT = "scforge-pretrained"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _aliases(model: nn.Module) -> dict[str, str]:
    """``name -> canonical name`` for parameters registered under more than one name."""
    first: dict[int, str] = {}
    alias: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            alias[name] = first[id(p)]
        else:
            first[id(p)] = name
    return alias


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads a consolidated state dict, tolerating a missing alias of a tied weight.

    Raises:
        ValueError: keys are missing or unexpected (other than tied aliases).
    """
    aliases = _aliases(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if aliases.get(k) not in state]
    if missing or unexpected:
        raise ValueError(f"consolidated weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; was the checkpoint written for another "
                         "model config?")


def consolidated_state(engine: Any, *, zero_stage: int, precision: str, ckpt_dir: Path | None,
                       tag: str | None) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the engine's module (call on rank 0, after a checkpoint).

    ZeRO-3 partitions the weights, and under ZeRO-1/2 or bf16 the fp32 master weights live in
    the optimizer's partitions (the module holds 16-bit copies), so those cases are rebuilt from
    the checkpoint with DeepSpeed's ``zero_to_fp32``. Plain fp32 stage 0 reads the module.
    """
    from_checkpoint = zero_stage >= 1 or precision == "bf16"
    if from_checkpoint and (ckpt_dir is None or tag is None):
        raise ValueError(f"exporting a ZeRO-{zero_stage} / {precision} run needs the checkpoint "
                         "directory and tag to consolidate from")
    state = None
    if from_checkpoint:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        except Exception:  # noqa: BLE001 - layouts zero_to_fp32 does not know; see below
            if zero_stage == 3:
                raise
    if state is None:  # whole weights on every rank below stage 3
        state = engine.module.state_dict()
    return {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}


def export_pretrained(out: str | Path, model_cfg: ModelConfig, state: dict[str, torch.Tensor],
                      *, manifest: dict[str, Any] | None = None,
                      extra: dict[str, Any] | None = None) -> Path:
    """Writes ``model.safetensors`` and ``config.json`` into ``out``.

    Args:
        out: export directory (created).
        model_cfg: the bound model config (vocabulary size and value mode filled in).
        state: consolidated weights (see :func:`consolidated_state`).
        manifest: the training shards' manifest; its vocabulary and tokenizer are recorded.
        extra: anything else worth keeping (training step, resolved training config).

    Returns:
        The export directory.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = get_model(model_cfg)  # a plain CPU model: the export never depends on DeepSpeed
    load_full_state(model, state)
    # config.json marks a finished export: it goes first and comes back last, and both files
    # appear whole, so a failure half-way (disk full) leaves nothing a reader would load.
    (out / CONFIG).unlink(missing_ok=True)
    with replacing(out / WEIGHTS) as tmp:
        save_model(model, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    info: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": dataclasses.asdict(model.config),
        "parameters": count_parameters(model),
    }
    if manifest is not None:
        info["vocab"] = manifest.get("vocab", {})
        info["vocab_hash"] = manifest.get("vocab_hash")
        info["tokenizer"] = manifest.get("tokenizer", {})
    info.update(extra or {})
    write_text_atomic(out / CONFIG, json.dumps(info, indent=1, default=str) + "\n")
    return out


def _foreign(path: str | Path) -> Any:
    """A Hugging Face BERT (Geneformer) or scGPT directory read in place, else None.

    Imported on use: :mod:`scforge.interop` sits above models, data and this module (it needs
    the vocabularies and tokenizer recipes); a plain export never loads it.
    """
    file = Path(path) / CONFIG
    if file.is_file():
        try:
            if json.loads(file.read_text()).get("format") == FORMAT:
                return None
        except (ValueError, AttributeError):
            return None
    from scforge.interop import open_foreign

    return open_foreign(path)


def read_pretrained_info(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an export (model config, vocabulary, tokenizer, training info).

    A Hugging Face ``BertForMaskedLM``/``BertModel`` directory (Geneformer) or a scGPT directory
    (``args.json``, ``vocab.json``, ``best_model.pt``) is read as the export ``scforge import``
    would write for it.

    Raises:
        FileNotFoundError: no export there.
        ValueError: not an scforge export of a readable version.
    """
    foreign = _foreign(path)
    if foreign is not None:
        return foreign.info
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; pass a directory written by the trainer "
                                "(<run>/export) or by export_pretrained")
    info = json.loads(file.read_text())
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{file}: format {info.get('format')!r} version {info.get('version')}; "
                         f"this scforge reads {FORMAT!r} version {VERSION}")
    return info


def load_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> SingleCellModel:
    """Rebuilds an exported model with plain PyTorch (no DeepSpeed), in eval mode.

    Args:
        path: export directory with ``model.safetensors`` and ``config.json``, or a Hugging
            Face BERT / scGPT checkpoint directory (converted on the fly; see
            :func:`read_pretrained_info`).
        device: where to put the weights.

    Returns:
        The model; ``model.config`` is its :class:`ModelConfig`.
    """
    foreign = _foreign(path)
    if foreign is not None:
        model = get_model(ModelConfig(**foreign.info["model"]))
        load_full_state(model, foreign.state())
        return model.to(device).eval()
    info = read_pretrained_info(path)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(info["model"]) - fields)
    if unknown:
        raise ValueError(f"{Path(path) / CONFIG} has model keys {unknown} this scforge does not "
                         "know; upgrade scforge to read it")
    model = get_model(ModelConfig(**info["model"]))
    load_model(model, str(Path(path) / WEIGHTS), strict=True, device=str(device))
    return model.to(device).eval()
