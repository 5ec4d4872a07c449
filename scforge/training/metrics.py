"""Training metrics: JSONL always, Weights & Biases when enabled; throughput, MFU, memory.

Every logged record is one JSON object per line in ``<run>/metrics.jsonl`` with a ``kind``
(``train`` or ``val``) and the optimizer ``step``. Train records carry at least ``loss``, ``lr``,
``grad_norm``, ``cells_per_s``, ``tokens_per_s`` (non-pad tokens), ``padded_tokens_per_s``,
``pad_fraction``, ``mfu`` (None when the peak is unknown), ``rss_gb`` and ``cuda_max_alloc_gb``,
plus the model's own metrics (``mlm_loss``, ``mlm_acc``, ...). Throughputs are global (summed
over ranks) over the interval since the previous record.

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices), with model FLOPs from
:func:`scforge.models.estimate_flops_per_token` at each batch's padded length (padding costs real
compute, so it counts as achieved work; ``pad_fraction`` says how much of it was wasted).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import psutil
import torch

from scforge.models import ModelConfig, estimate_flops_per_token

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # Dense peak per device, TFLOP/s (vendor datasheets, no sparsity). fp32 on Ampere+ is TF32
    # tensor-core peak, which PyTorch uses for matmuls only when allowed; treat it as an upper bound.
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},  # SXM; PCIe is ~756
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
    "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7},
    "4090": {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6},
}


def peak_tflops(device: torch.device, precision: str, configured: float = 0.0) -> float | None:
    """Peak TFLOP/s of one device: ``configured`` if > 0, else the GPU table, else None."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None  # CPU peaks vary too much to guess; set train.peak_tflops
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name and peaks.get(precision):
            return peaks[precision]
    return None


def batch_flops(cfg: ModelConfig, seq_len: int, n_tokens: int, mask_prob: float) -> float:
    """Training FLOPs of one micro-batch of ``n_tokens`` padded tokens at length ``seq_len``."""
    family = cfg.family
    predicted = 1.0 if family == "autoregressive" else mask_prob
    visible = 1.0 - mask_prob if family == "masked_autoencoder" else 1.0
    per_token = estimate_flops_per_token(cfg, seq_len, predicted_fraction=predicted,
                                         visible_fraction=max(visible, 1e-6))
    return per_token * n_tokens


def memory_stats(device: torch.device) -> dict[str, float]:
    """Resident memory of this process and the CUDA allocator's high-water mark (GiB)."""
    out = {"rss_gb": psutil.Process(os.getpid()).memory_info().rss / 2**30,
           "cuda_max_alloc_gb": 0.0}
    if device.type == "cuda":
        out["cuda_max_alloc_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


class MetricsLogger:
    """Rank 0's sink: appends JSONL records and mirrors them to wandb when enabled.

    Args:
        path: the JSONL file.
        keep_until: on resume, records with ``step`` above this are dropped from the existing
            file first (steps the killed run logged after its last checkpoint will be redone);
            None starts a new file.
        wandb_run: an initialised wandb run, or None.
    """

    def __init__(self, path: Path, *, keep_until: int | None, wandb_run: Any = None) -> None:
        self.path = path
        self.wandb = wandb_run
        kept: list[str] = []
        if keep_until is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= keep_until:
                        kept.append(line)
                except (ValueError, AttributeError):
                    continue  # a line torn by a kill mid-write
        path.write_text("".join(k + "\n" for k in kept))
        self._fh = path.open("a")

    def log(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, default=float) + "\n")
        self._fh.flush()
        if self.wandb is not None:
            data = {k: v for k, v in record.items()  # val keys already read val_*
                    if isinstance(v, (int, float)) and k != "step"}
            self.wandb.log(data, step=int(record["step"]))

    def close(self) -> None:
        self._fh.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def init_wandb(cfg: Any, out_dir: Path, config_dict: dict[str, Any]) -> Any:
    """An offline-by-default wandb run whose id lives in the run directory (resumes append).

    ``WANDB_MODE`` is set from ``wandb.mode`` unless already in the environment, so nothing waits
    on the network unless asked for.
    """
    os.environ.setdefault("WANDB_MODE", cfg.wandb.mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    id_file = out_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(project=cfg.wandb.project, name=cfg.wandb.name or out_dir.name,
                      id=run_id, resume="allow", dir=str(out_dir), config=config_dict,
                      mode=os.environ["WANDB_MODE"])
