"""Framework-free training pieces: optimizer, LR schedule, one step, and resumable checkpoints.

``possam_label.engine.train_worker`` runs these inside Ray Train workers; nothing here imports Ray.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..config import PosSAMConfig, TrainConfig
from ..model.clip_backbone import TextClassifier
from ..model.possam import FROZEN_PREFIXES, PosSAM, load_heads, save_heads
from ..model.weights import WeightsError
from .criterion import SetCriterion, total_loss
from .matcher import HungarianMatcher

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


def build_criterion(cfg: TrainConfig, num_classes: int) -> SetCriterion:
    matcher = HungarianMatcher(cost_class=cfg.class_weight, cost_mask=cfg.mask_weight, cost_dice=cfg.dice_weight, num_points=cfg.num_points)
    return SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        class_weight=cfg.class_weight,
        mask_weight=cfg.mask_weight,
        dice_weight=cfg.dice_weight,
        iou_weight=cfg.iou_weight,
        void_weight=cfg.void_weight,
        num_points=cfg.num_points,
        oversample_ratio=cfg.oversample_ratio,
        importance_sample_ratio=cfg.importance_sample_ratio,
        iou_loss=cfg.iou_loss,
        iou_supervise_unmatched=cfg.iou_supervise_unmatched,
    )


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on norms, embeddings, biases and scales."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module_name = name.rsplit(".", 1)[0]
        is_norm_or_embedding = any(tag in module_name for tag in ("norm", "embed", "level_embed", "query_feat")) or "void_embedding" in name
        if param.ndim <= 1 or is_norm_or_embedding:
            no_decay.append(param)
        else:
            decay.append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """Linear warmup, then a step schedule (x lr_gamma at each of lr_steps)."""
    factor = cfg.lr_gamma ** sum(iteration >= s for s in cfg.lr_steps)
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        factor *= (iteration + 1) / cfg.warmup_iters
    return factor


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, cfg: TrainConfig) -> float:
    lr = cfg.lr * lr_factor(iteration, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def fill_padding(images: torch.Tensor, valid: Optional[torch.Tensor], pad_value: Sequence[float]) -> torch.Tensor:
    """(B, 3, S, S) [0, 255] images with padded pixels set to ``pad_value`` (as at inference).

    ``valid`` is (B, S, S) bool (True on real pixels) or None.
    """
    images = images.float()
    if valid is None:
        return images
    fill = torch.tensor(pad_value, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(valid[:, None].to(images.device), images, fill)


def train_step(
    model: PosSAM,
    heads: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    text: TextClassifier,
    cfg: PosSAMConfig,
    device: torch.device,
) -> dict[str, float]:
    """One optimisation step.

    Args:
        model: the (unwrapped) PosSAM model, used for the frozen encoders.
        heads: what computes ``forward_heads`` (the model itself or its DDP wrapper).
        batch: {"images": (B, 3, S, S) uint8/float, "valid": (B, S, S) bool or None,
            "targets": [{"labels": (N,), "masks": (N, S, S)[, "ignore": (S, S)]}]}; or, instead of images,
            "features": (sam (B, C, S/16, S/16), clip (B, C', s, s)) from the frozen encoders and,
            for a model that ``needs_pixels``, "pixels": (B, 3, S, S) [0, 255] with the padding filled.
    Returns:
        Scalar losses as floats, with "loss" the total.
    """
    targets = [{key: value.to(device) for key, value in t.items()} for t in batch["targets"]]  # labels, masks[, ignore]
    use_amp = cfg.train.amp and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        if "features" in batch:  # frozen-encoder features cached beforehand
            sam_features, clip_features = (f.to(device) for f in batch["features"])
            images = batch["pixels"].to(device).float() if batch.get("pixels") is not None else None
        else:
            images = fill_padding(batch["images"].to(device), batch.get("valid"), cfg.sam.pixel_mean)
            sam_features, clip_features = model.encode(images)
        outputs = heads(sam_features, clip_features, text, pixels=images)
    outputs = _to_float(outputs)
    losses = criterion(outputs, targets)
    loss = total_loss(losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip) if cfg.train.grad_clip > 0 else None
    optimizer.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss"] = float(loss.detach())
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    return out


def _to_float(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    if isinstance(outputs, torch.Tensor) and outputs.is_floating_point():
        return outputs.float()
    return outputs


class HeadsForward(nn.Module):
    """Wraps ``PosSAM.forward_heads`` so DDP sees only the trainable computation.

    ``deep_supervision=False`` returns the final stage only (``train.deep_supervision``).
    """

    def __init__(self, model: PosSAM, deep_supervision: bool = True) -> None:
        super().__init__()
        self.model = model
        self.deep_supervision = deep_supervision

    def forward(self, sam_features: torch.Tensor, clip_features: torch.Tensor, text: TextClassifier, pixels: Optional[torch.Tensor] = None) -> dict[str, Any]:
        return self.model.forward_heads(sam_features, clip_features, text, all_stages=self.deep_supervision, pixels=pixels)


def freeze_modules(model: PosSAM, names: Sequence[str]) -> list[str]:
    """Keep the named head modules fixed (``train.frozen_modules``): no gradient, eval mode.

    A name is a head module (``ldp``) or a module inside one (``ldp.crop_encoder.convs``, e.g. a
    pretrained part kept as it is). Call after ``model.train()``. Returns the names of the
    parameters frozen.
    """
    heads = {name for name, _ in model.named_children() if not f"{name}.".startswith(FROZEN_PREFIXES)}
    modules = dict(model.named_modules())
    unknown = sorted(n for n in set(names) if n.split(".", 1)[0] not in heads or n not in modules)
    if unknown:
        raise ValueError(f"train.frozen_modules: {unknown} are not head modules of this model or modules inside them (head modules: {sorted(heads)})")
    frozen = []
    for name in names:
        module = modules[name]
        module.eval()
        for param_name, param in module.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{name}.{param_name}")
    if names and not any(p.requires_grad for p in model.trainable_parameters()):
        raise ValueError(f"train.frozen_modules: {list(names)} leaves nothing to train")
    return frozen


# ---- checkpoints -----------------------------------------------------------------------------


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors (for safetensors) and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = tensor.detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_checkpoint(
    out_dir: str | Path,
    model: PosSAM,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    cfg: PosSAMConfig,
    train_vocabulary: Any,
    keep: int = 2,
) -> Path:
    """Write ``out_dir/checkpoints/iter_XXXXXXX`` atomically and point ``latest`` at it.

    Holds ``heads.safetensors`` (usable directly as a PosSAM head checkpoint),
    ``optimizer.safetensors`` and ``state.json`` (iteration, RNG state).
    """
    from safetensors.torch import save_file

    root = Path(out_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter_{iteration:07d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_heads(model, tmp / "heads.safetensors", cfg, train_vocabulary, extra={"iteration": str(iteration)})
    tensors, meta = _optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"meta": json.dumps(meta)})
    torch_rng = torch.get_rng_state()
    (tmp / "state.json").write_text(json.dumps({"iteration": iteration, "torch_rng": torch_rng.tolist()}))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / LATEST)
    old = sorted(p for p in root.glob("iter_*") if p.is_dir())[:-keep] if keep > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return final


def init_heads_from(model: PosSAM, path: str | Path) -> list[str]:
    """Load the head tensors of ``path`` whose name and shape match ``model``'s (``train.init_heads``).

    Unlike :func:`load_heads` the architectures may differ. Returns the names of the model's head
    tensors that were not in the file (they keep their initialisation).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise WeightsError(f"train.init_heads: {path} is not a .safetensors file")
    reference = model.heads_state_dict()
    loaded = load_file(str(path))
    matching = {k: v.to(reference[k].dtype) for k, v in loaded.items() if k in reference and v.shape == reference[k].shape}
    if not matching:
        raise WeightsError(f"train.init_heads: {path} has no tensor matching this model's heads")
    model.load_state_dict(matching, strict=False)
    new = sorted(set(reference) - set(matching))
    logger.info("initialised %d head tensors from %s; %d keep their initialisation", len(matching), path, len(new))
    return new


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_training_checkpoint(path: str | Path, model: PosSAM, optimizer: torch.optim.Optimizer, cfg: PosSAMConfig) -> int:
    """Restore heads, optimizer and RNG; returns the iteration to continue from."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    load_heads(model, path / "heads.safetensors", cfg)
    tensors = load_file(str(path / "optimizer.safetensors"))
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["meta"])
    device = next(p for p in model.parameters() if p.requires_grad).device
    optimizer.load_state_dict(_optimizer_from_tensors({k: v.to(device) if k.rsplit(".", 1)[-1] != "step" else v for k, v in tensors.items()}, meta))
    state = json.loads((path / "state.json").read_text())
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    logger.info("resumed from %s (iteration %d)", path, state["iteration"])
    return int(state["iteration"])
