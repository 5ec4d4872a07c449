"""Fine-tuning through the pretraining Trainer: DeepSpeed checkpoints and exact resume, per-group
learning rates on the engine's optimizer, gradual unfreezing by LR gates, ZeRO stages 2 and 3."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scforge.config.loader import ConfigError
from scforge.finetune import FinetuneConfig, build_trainer, finetune, load_finetuned, predict
from scforge.training import checkpoint as ckpt
from scforge.training.export import load_pretrained


@pytest.fixture(scope="module")
def cells(pbmc_path):
    a = ad.read_h5ad(pbmc_path)
    keep = np.sort(np.random.default_rng(3).choice(a.n_obs, 96, replace=False))
    return a[keep].copy()


def _cfg(export: Path, out: Path, **kw) -> FinetuneConfig:
    base = {"checkpoint": str(export), "out_dir": str(out), "epochs": 2, "batch_size": 16,
            "val_fraction": 0.0, "progress": False, "head_dropout": 0.0, "warmup_fraction": 0.0,
            "lr": 1e-2, "encoder_lr": 4e-3, "layer_decay": 0.5}
    base.update(kw)
    return FinetuneConfig(**base)


def _train_records(run: Path) -> list[tuple]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in recs if r["kind"] == "train"]


class _Stop:
    """Raises after optimizer step ``at`` (a crash between checkpoints)."""

    name, at_end = "stop", False

    def __init__(self, at: int) -> None:
        self.every = at

    def __call__(self, trainer):
        raise KeyboardInterrupt(f"stopped at step {trainer.step}")


class _Record:
    """Copies named parameters of the engine's module after every step."""

    name, every, at_end = "record", 1, False

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.seen: dict[int, dict[str, torch.Tensor]] = {}
        self.lrs: dict[int, list[float]] = {}

    def __call__(self, trainer):
        params = dict(trainer.engine.module.named_parameters())
        self.seen[trainer.step] = {n: params[n].detach().clone() for n in self.names}
        self.lrs[trainer.step] = [float(g["lr"]) for g in trainer.engine.optimizer.param_groups]
        return {}


def test_checkpoints_and_resume_auto_equal_the_unbroken_run(debug_export, cells, tmp_path):
    """fp32 CPU with head dropout, validation every epoch and gradual unfreezing: a run stopped
    after step 5 and rerun with resume=auto continues from its step-4 checkpoint and logs the
    unbroken run's losses, gradient norms and learning rates bit for bit."""
    kw = {"epochs": 3, "val_fraction": 0.25, "head_dropout": 0.2, "unfreeze_every": 1,
          "ckpt_every": 2, "keep_last_k": 2}
    whole = finetune(_cfg(debug_export, tmp_path / "whole", **kw), cells)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(debug_export, broken, **kw), cells, callbacks=[_Stop(5)])
    assert [s for s, _ in ckpt.complete_checkpoints(broken / "checkpoints")] == [2, 4]
    res = finetune(_cfg(debug_export, broken, **kw), cells)
    assert res["resumed_from"] and Path(res["resumed_from"]).name == "step_00000004"
    steps = whole["step"]
    assert steps == res["step"] == 3 * 5  # 72 training cells / 16 = 5 steps per epoch
    a, b = _train_records(tmp_path / "whole"), _train_records(broken)
    assert [r[0] for r in b] == list(range(1, steps + 1))
    assert b == a
    assert res["history"] == whole["history"]
    # the pretraining checkpoint format: DeepSpeed tag dirs + per-rank JSON + completion marker
    tags = ckpt.complete_checkpoints(broken / "checkpoints")
    assert [s for s, _ in tags] == [14, 15]  # keep_last_k=2
    tag = tags[-1][1]
    assert (tag / "mp_rank_00_model_states.pt").is_file()
    assert json.loads(ckpt.rank_file(tag, 0).read_text())["format"] == ckpt.STATE_FORMAT
    for run in (tmp_path / "whole", broken):
        assert (run / "ds_config.json").is_file() and (run / "config.yaml").is_file()
    model, meta = load_finetuned(broken)
    assert meta["history"] == whole["history"] and meta["n_train"] == 72
    # other cells into a directory whose checkpoints resume=auto would pick up: refused
    with pytest.raises(ConfigError, match="holds checkpoints"):
        finetune(_cfg(debug_export, broken, **kw), cells[:80].copy())
    assert (broken / "data" / "train" / "manifest.json").is_file()  # nothing was deleted


def test_bad_labels_fail_with_one_line(debug_export, cells, tmp_path):
    with pytest.raises(ValueError, match="label_key='nope' is not an obs column"):
        finetune(_cfg(debug_export, tmp_path / "a", label_key="nope"), cells)
    with pytest.raises(ValueError, match="numeric label_key"):
        finetune(_cfg(debug_export, tmp_path / "b", task="regression"), cells)


@pytest.mark.parametrize("stage", [0, 2])
def test_layerwise_lrs_and_unfreezing_on_the_engine(debug_export, cells, tmp_path, stage):
    """The engine's optimizer holds one LR per group (head lr, encoder_lr x 0.5^depth); with
    unfreeze_every=1 the top group's weights stay bit-identical through epoch 0 and move in
    epoch 1, the lower groups never move in 2 epochs, and the head moves from step 1."""
    cfg = _cfg(debug_export, tmp_path / "run", unfreeze_every=1, zero_stage=stage,
               lr=1e-2, encoder_lr=4e-3, layer_decay=0.5)
    top = "net.encoder.encoder.norm.weight"
    lower = "net.encoder.encoder.blocks.0.attn.qkv.weight"
    rec = _Record([top, lower, "net.head.1.weight"])
    trainer = build_trainer(cfg, cells, callbacks=[rec])
    embed = "net.encoder.embed." + next(iter(dict(trainer.engine.module.net.encoder.embed
                                                  .named_parameters())))
    rec.names.append(embed)
    groups = trainer.engine.optimizer.param_groups
    names = [g["name"] for g in groups]
    assert set(names) == {"head", "encoder0", "encoder1", "encoder2"}
    assert [g["start_step"] for g in groups if g["name"] == "encoder0"][0] == 6  # 6 steps/epoch
    # step 0 of the schedule: every group sits at its own factor x optim.lr (encoder ones gated)
    scale = {g["name"]: g["lr_scale"] for g in groups}
    assert scale["head"] == 1.0 and scale["encoder0"] == pytest.approx(0.4)
    assert scale["encoder1"] == pytest.approx(0.2) and scale["encoder2"] == pytest.approx(0.1)
    assert all(lr == 0.0 for n, lr in zip(names, [g["lr"] for g in groups], strict=True)
               if n != "head")
    assert [g["lr"] for g in groups if g["name"] == "head"] == [pytest.approx(1e-2)] * 2
    init = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()
            if n in rec.names}
    trainer.fit()
    # rec.lrs[s]: the learning rates the next optimizer step (0-based index s) will use
    lrs = {s: dict(zip(names, v, strict=True)) for s, v in rec.lrs.items()}
    for step in range(1, 7):  # after optimizer steps 0-5, in which encoder0's lr was 0
        assert torch.equal(rec.seen[step][top], init[top]), step
        assert not torch.equal(rec.seen[step]["net.head.1.weight"], init["net.head.1.weight"])
        assert step == 6 or (lrs[step]["encoder0"] == 0.0 and lrs[step]["head"] > 0)
    assert lrs[6]["encoder0"] == pytest.approx(0.4 * lrs[6]["head"])  # opens at step index 6
    assert lrs[6]["encoder1"] == 0.0
    assert not torch.equal(rec.seen[7][top], init[top])
    for step in rec.seen:
        assert torch.equal(rec.seen[step][lower], init[lower])
        assert torch.equal(rec.seen[step][embed], init[embed])


@pytest.mark.parametrize(("stage", "precision"), [(2, "fp32"), (3, "fp32"), (1, "bf16")])
def test_zero_lora_finetune_exports_merged_model(debug_export, cells, tmp_path, stage,
                                                 precision):
    """ZeRO-1/2/3 in one process with LoRA: only adapters and head require grad inside the
    engine; the export (consolidated from the ZeRO checkpoint, frozen weights included) has
    the adapters merged, keeps every non-adapted encoder weight, and predicts."""
    cfg = _cfg(debug_export, tmp_path / "run", zero_stage=stage, epochs=1, precision=precision)
    cfg.lora.enabled, cfg.lora.backend = True, "builtin"
    trainer = build_trainer(cfg, cells)
    grads = {n for n, p in trainer.engine.module.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n or n.startswith("net.head.") for n in grads)
    result = trainer.fit()
    assert result.export_dir is not None
    model, meta = load_finetuned(result.export_dir)
    assert meta["lora"] and meta["lora_backend"] == "builtin"
    pre = load_pretrained(debug_export).state_dict()
    got = model.encoder.state_dict()
    assert set(got) == set(pre)  # merged: plain Linear layers again
    moved = {k for k in pre if not torch.equal(pre[k], got[k])}
    assert moved and all(".qkv." in k or ".out." in k for k in moved)
    # the export is also a pretraining export of the fine-tuned encoder
    enc = load_pretrained(result.export_dir)
    assert all(torch.equal(enc.state_dict()[k], got[k]) for k in got)
    out = predict(result.export_dir, cells[:10].copy(), None, device="cpu")
    assert set(out.obs["scforge_pred"]) <= set(meta["classes"])


def test_v1_finetuned_directory_still_loads(debug_export, tmp_path):
    """A v1 directory (one safetensors file with encoder and head) is read as before."""
    from safetensors.torch import save_model

    from scforge.finetune import FinetuneModel
    from scforge.training.export import read_pretrained_info

    torch.manual_seed(0)
    model = FinetuneModel(load_pretrained(debug_export), 3, dropout=0.0)
    save_model(model, str(tmp_path / "model.safetensors"))
    meta = {"format": "scforge-finetuned", "version": 1,
            "pretrained": read_pretrained_info(debug_export), "task": "classification",
            "classes": ["a", "b", "c"], "n_outputs": 3, "head_hidden": 0, "pooling": "model",
            "max_len": 64, "target_scale": [0.0, 1.0]}
    (tmp_path / "finetune.json").write_text(json.dumps(meta))
    back, _ = load_finetuned(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
