"""A small open_clip CLIP (BatchNorm CNN image tower) trained on the synthetic world.

No pretrained CLIP weights can reach the machines this project runs on, so the project ships a
small CLIP trained contrastively on scenes of :mod:`possam_label.synthetic.world`, over ALL the
world's classes (base and novel, as web-scale CLIP has seen everything). PosSAM only ever uses it
frozen, through one path (``possam_label.model.clip_backbone``):

    the 256x256 scene at its own scale -> ``visual.trunk.forward_features`` -> (B, 256, 8, 8)
    -> average inside a mask -> ``visual.trunk.forward_head`` -> ``visual.head`` -> 128-d
    -> cosine with the text embeddings of "a photo of a {synonym}." (14 ViLD templates averaged)

so training has three terms:
  * contrastive (CLIP InfoNCE with a learnable logit scale; identical captions in a batch count as
    positives of each other) between captions and (a) object crops with context / stuff patches,
    (b) whole scenes at a small size. Captions come from :class:`CaptionGenerator`: colours,
    sizes, backgrounds and scene words, deterministic by seed. Each thing also comes cut out
    onto a flat random colour (``ClipSampling.cut_out_things``): measured with a shape-tower probe (docs/small_model.md),
    without such crops a tower trained on whole scenes names held-out shapes at chance, with
    them 84 % (base) and 85 % (novel).
  * crop classification: crops and patches against the text embedding of one random ViLD prompt
    per class (captions alone let the model match colours and ignore shapes).
  * dense mask pooling: scene windows at the inference scale, the dense map pooled inside
    every ground-truth segment and classified (cross-entropy, same logit scale) against the
    text embeddings of one random ViLD prompt per class, i.e. exactly the path PosSAM uses.

Note on the image embedding: with ``timm_pool=""`` the trunk's head average-pools all cells, so the
global image embedding of a crop *is* the mask-pooled embedding with an all-ones mask.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.bn_convnet import TIMM_NAME as BN_CONVNET, register_with_timm
from ..model.weights import WeightsError, load_state_dict
from ..train.checkpoints import load_checkpoint_into, prepare_out_dir, save_fp16_checkpoint
from ..train.plots import plot_loss_curve
from ..train.schedules import cosine_lr
from .classes import WorldIndex
from .clip_data import ClipBatch, ClipSampling, SyntheticCaptionStream
from .clip_dense import (
    cell_weights,
    class_text_embeddings,
    classify_embeddings,
    dense_features,
    embed_pooled,
    mask_pooled_embeddings,
    normalize_pixels,
)
from .small_sam import TrainResult
from .world import HELD_OUT_SEED, SceneRenderer, held_out_scenes

logger = logging.getLogger(__name__)

# The shipped model's open_clip config (written as clip_small.json). The text tower is narrower
# than CLIP's usual (width 64): its token table alone (49,408 x width) dominates the file size.
# The image tower is possam_label.model.bn_convnet's BatchNorm CNN (registered with timm): the
# ConvNeXt-atto of the first shipped CLIP never learnt to tell shapes apart.
SMALL_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "timm_model_name": BN_CONVNET,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "mlp",
        "timm_drop": 0.0,
        "timm_drop_path": 0.0,
        "image_size": 64,
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


def build_small_clip(checkpoint: Optional[str | Path] = None, config: Optional[dict[str, Any]] = None) -> nn.Module:
    """The small ``open_clip.CLIP`` of :data:`SMALL_CLIP_CONFIG` (or ``config``), in eval mode.

    Raises:
        WeightsError: the file is missing, unreadable or does not fit the model.
    """
    import open_clip

    register_with_timm()
    cfg = copy.deepcopy(config or SMALL_CLIP_CONFIG)
    model = open_clip.CLIP(embed_dim=cfg.pop("embed_dim"), vision_cfg=cfg.pop("vision_cfg"), text_cfg=cfg.pop("text_cfg"), **cfg)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, "the small CLIP model")
    model.eval()
    return model


def small_clip_tokenizer(context_length: int = SMALL_CLIP_CONFIG["text_cfg"]["context_length"]) -> Any:
    """open_clip's bundled BPE tokenizer (no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)



# --------------------------------------------------------------------------------------------
# Losses and training
# --------------------------------------------------------------------------------------------
def multi_positive_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str], logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where pairs with identical captions are all positives.

    Args:
        image_emb, text_emb: (N, D) normalised.
        logit_scale: scalar (already exp'd).
    """
    keys = [" ".join(c.lower().strip(" .").split()) for c in captions]
    same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32, device=image_emb.device)
    targets = same / same.sum(dim=1, keepdim=True)
    logits = logit_scale * image_emb @ text_emb.t()
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


@dataclass
class ClipTrainConfig:
    """Small-CLIP training run. Defaults reproduce the shipped checkpoint."""

    steps: int = 650
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    dense_weight: float = 1.0
    class_weight: float = 1.0
    thing_weight: float = 2.0
    text_class_weight: float = 1.0
    # Start from these weights (e.g. the previous shipped checkpoint) instead of random ones.
    init_checkpoint: Optional[str] = None
    # Take only the image tower (and the temperature) from init_checkpoint; the text tower starts
    # random. A text tower whose shape names have collapsed onto one point sits at a symmetric
    # point where the text-side class term has no gradient to separate them.
    init_visual_only: bool = False
    # Take only the text tower (and the temperature) from init_checkpoint; the image tower starts
    # random. For a new image-tower architecture under an already trained text tower.
    init_text_only: bool = False
    # Train the image tower only: the text tower and the temperature keep init_checkpoint's
    # values. PosSAM's text classifier (base and novel class embeddings) then stays exactly as the
    # heads were trained against, and only the dense features the heads read change.
    freeze_text_tower: bool = False
    log_every: int = 10
    num_workers: int = 1
    # One compute thread plus one rendering worker fill the 2 cores; measured on the shared
    # machine, 2 OpenMP threads next to the worker ran up to 10x slower (threads spin-waiting).
    num_threads: int = 1
    eval_scenes: int = 100
    sampling: ClipSampling = field(default_factory=ClipSampling)


def clip_step_losses(
    model: nn.Module,
    tokenizer: Any,
    batch: ClipBatch,
    dense_weight: float,
    class_weight: float,
    thing_weight: float,
    text_class_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Losses of one batch.

    * 'contrastive': InfoNCE between images and captions.
    * 'crop_class': cross-entropy of crop / patch embeddings against one ViLD prompt per class.
      Without it the contrastive term was satisfied by colour words alone: after 650 steps crops
      were classified by shape at chance level (4 %) while stuff was 97 % right.
    * 'dense': cross-entropy of mask-pooled window segments against the same class prompts, thing
      segments weighted ``thing_weight`` (they are the hard part).
    * 'text_class': every class prompt classified against the class means (text side only). It
      stands in for the language knowledge real CLIP brings from the web (synonyms close, different
      words apart): while the image tower cannot yet tell shapes apart, the image terms pull all
      shape names onto one point (the 12 shape classes of the 650-step checkpoint had pairwise
      cosine 1.00), and PosSAM's in-vocabulary classifier, built from these embeddings, then cannot
      separate base shapes either.
    Also training accuracies 'crop_thing_acc' and 'dense_thing_acc' (things only).
    """
    device = next(model.parameters()).device
    scale = model.logit_scale.exp().clamp(max=100.0)
    image_emb = F.normalize(model.encode_image(normalize_pixels(batch.images.to(device).float())), dim=-1)
    texts = list(batch.captions) + list(batch.class_prompts)
    text_all = F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)
    text_emb, prompt_emb = text_all[: len(batch.captions)], text_all[len(batch.captions) :]
    num_classes = int(batch.class_prompt_index.max()) + 1
    class_sum = torch.zeros(num_classes, prompt_emb.shape[1], device=device).index_add(0, batch.class_prompt_index.to(device), prompt_emb)
    class_emb = F.normalize(class_sum, dim=-1)
    contrastive = multi_positive_clip_loss(image_emb, text_emb, batch.captions, scale)
    zero = torch.zeros((), device=device)
    crop_class, crop_acc = zero, zero
    labels = batch.image_labels.to(device)
    labelled = labels >= 0
    if labelled.any():
        crop_logits = scale * image_emb[labelled] @ class_emb.t()
        crop_class = F.cross_entropy(crop_logits, labels[labelled])
        is_thing = batch.image_isthing.to(device)[labelled]
        if is_thing.any():
            crop_acc = (crop_logits.argmax(dim=1) == labels[labelled])[is_thing].float().mean()
    dense, dense_acc = zero, zero
    if len(batch.dense_labels):
        feats = model.visual.trunk.forward_features(normalize_pixels(batch.dense_pixels.to(device)))  # (B, 320, g, g)
        per_segment = feats[batch.dense_window_index.to(device)]  # (M, 320, g, g)
        w = batch.dense_weights.to(device)
        pooled = torch.einsum("mhw,mchw->mc", w, per_segment) / w.sum(dim=(-2, -1)).clamp(min=1e-6)[:, None]
        seg_emb = F.normalize(embed_pooled(model, pooled), dim=-1)
        logits = scale * seg_emb @ class_emb.t()
        seg_labels = batch.dense_labels.to(device)
        things = batch.dense_isthing.to(device)
        seg_weight = torch.where(things, torch.tensor(thing_weight, device=device), torch.tensor(1.0, device=device))
        dense = (F.cross_entropy(logits, seg_labels, reduction="none") * seg_weight).sum() / seg_weight.sum()
        if things.any():
            dense_acc = (logits.argmax(dim=1) == seg_labels)[things].float().mean()
    text_logits = scale * prompt_emb @ class_emb.t()
    text_class = F.cross_entropy(text_logits, batch.class_prompt_index.to(device))
    loss = contrastive + class_weight * crop_class + dense_weight * dense + text_class_weight * text_class
    return {
        "loss": loss,
        "text_class": text_class,
        "contrastive": contrastive,
        "crop_class": crop_class,
        "dense": dense,
        "crop_thing_acc": crop_acc,
        "dense_thing_acc": dense_acc,
    }


def initial_clip_model(config: ClipTrainConfig) -> nn.Module:
    """The model a training run starts from: random, ``config.init_checkpoint``, or one tower of it
    (``init_visual_only`` / ``init_text_only``, the other random); with ``freeze_text_tower`` only
    the image tower requires gradients.

    Raises:
        WeightsError: the checkpoint (or the tower taken from it) does not fit the small CLIP.
    """
    if config.init_checkpoint and config.init_visual_only:
        model = build_small_clip()
        state = {k: v.float() for k, v in load_state_dict(config.init_checkpoint).items() if k.startswith("visual.") or k == "logit_scale"}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith("visual.") for k in missing):
            raise WeightsError(f"{config.init_checkpoint}: its image tower does not fit the small CLIP model")
        logger.info("image tower from %s, text tower random", config.init_checkpoint)
    elif config.init_checkpoint and config.init_text_only:
        model = build_small_clip()
        state = {k: v.float() for k, v in load_state_dict(config.init_checkpoint).items() if not k.startswith("visual.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("visual.") for k in missing):
            raise WeightsError(f"{config.init_checkpoint}: its text tower does not fit the small CLIP model")
        logger.info("text tower from %s, image tower random", config.init_checkpoint)
    else:
        model = build_small_clip(config.init_checkpoint)
    if config.freeze_text_tower:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("visual."))
    return model


def _clip_optimizer(model: nn.Module, config: ClipTrainConfig) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the parameters that require gradients, and that parameter list (for clipping)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # No decay on norms, biases, embeddings, positional tables and the temperature.
        (no_decay if p.ndim <= 1 or "embedding" in name or name == "logit_scale" else decay).append(p)
    trainable = decay + no_decay  # with a frozen text tower, the image tower's parameters only
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    return optimizer, trainable


def train_small_clip(
    out_dir: str | Path,
    config: ClipTrainConfig = ClipTrainConfig(),
    renderer: Optional[SceneRenderer] = None,
    progress: bool = True,
) -> TrainResult:
    """Train the small CLIP (from scratch, or on from ``config.init_checkpoint``) and write into ``out_dir``:

    ``clip_small.safetensors`` (fp16, metadata: model config, train config, steps, seed, metrics),
    ``clip_small.json`` (open_clip model config), ``loss_clip_small.png``,
    ``train_log_clip_small.json`` (loss history, timing, held-out metrics).
    """
    from tqdm import tqdm

    if config.init_visual_only and config.init_text_only:
        raise ValueError("init_visual_only and init_text_only exclude each other")
    if config.freeze_text_tower and (not config.init_checkpoint or config.init_visual_only):
        raise ValueError("freeze_text_tower needs init_checkpoint (without init_visual_only): a frozen text tower must be a trained one")
    out = prepare_out_dir(out_dir)
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    model = initial_clip_model(config)
    model.train()
    tokenizer = small_clip_tokenizer()
    optimizer, trainable = _clip_optimizer(model, config)
    loader = torch.utils.data.DataLoader(
        SyntheticCaptionStream(config.seed, config.sampling, renderer),
        batch_size=None,
        num_workers=config.num_workers,
        worker_init_fn=_single_thread_worker,
        prefetch_factor=3 if config.num_workers else None,
        persistent_workers=bool(config.num_workers),
    )
    history: list[dict[str, float]] = []
    keys = ("loss", "contrastive", "crop_class", "dense", "text_class", "crop_thing_acc", "dense_thing_acc")
    window: dict[str, list[float]] = {k: [] for k in keys}
    start = time.time()
    batches = iter(loader)
    bar = tqdm(range(config.steps), desc="small CLIP", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = cosine_lr(step, config.steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = clip_step_losses(model, tokenizer, next(batches), config.dense_weight, config.class_weight, config.thing_weight, config.text_class_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, float(np.log(100.0)))
        for k in keys:
            window[k].append(float(losses[k].detach()))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            row = {"step": step + 1, "lr": lr, "elapsed_s": time.time() - start, "logit_scale": float(model.logit_scale.detach().exp())}
            row.update({k: float(np.mean(v)) for k, v in window.items()})
            history.append(row)
            window = {k: [] for k in keys}
            bar.set_postfix(loss=f"{row['loss']:.3f}", thing_acc=f"{row['dense_thing_acc']:.2f}")
            logger.info(
                "step %d loss %.4f contrastive %.4f crop_class %.4f dense %.4f text_class %.4f thing acc crop %.3f dense %.3f scale %.1f",
                step + 1, row["loss"], row["contrastive"], row["crop_class"], row["dense"], row["text_class"],
                row["crop_thing_acc"], row["dense_thing_acc"], row["logit_scale"],
            )
    wall = time.time() - start
    model.eval()
    metrics = evaluate_dense_classification(model, tokenizer, num_scenes=config.eval_scenes, renderer=renderer, progress=progress)
    metadata = {
        "model": "open_clip.CLIP (small, possam_label.synthetic.small_clip)",
        "model_config": SMALL_CLIP_CONFIG,
        "train_config": asdict(config),
        "steps": config.steps,
        "seed": config.seed,
        "train_wall_s": round(wall, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "held_out_metrics": metrics,
    }
    ckpt = save_fp16_checkpoint(model, out / "clip_small.safetensors", metadata)
    (out / "clip_small.json").write_text(json.dumps(SMALL_CLIP_CONFIG, indent=2) + "\n")
    plot = plot_loss_curve(history, out / "loss_clip_small.png", f"small CLIP ({config.steps} steps, seed {config.seed})", ["loss", "contrastive", "crop_class", "dense", "text_class"])
    log_path = out / "train_log_clip_small.json"
    log_path.write_text(json.dumps({"metadata": metadata, "history": history}, indent=1))
    return TrainResult(ckpt, plot, log_path, history[-1]["loss"] if history else float("nan"), wall, metrics)


def _single_thread_worker(worker_id: int) -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Evaluation: zero-shot classification of GT segments through the dense path
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_dense_classification(
    model: nn.Module,
    tokenizer: Any,
    num_scenes: int = 100,
    renderer: Optional[SceneRenderer] = None,
    seed: int = HELD_OUT_SEED,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of classifying held-out GT segments by mask-pooled dense features at 512 input
    against the 18 class text embeddings (14 ViLD templates, max over synonyms).

    Returns accuracies for things / stuff x base / novel, overall, and segment counts.
    """
    from tqdm import tqdm

    world = WorldIndex()
    text, class_index = class_text_embeddings(model, tokenizer, world.synonyms)
    device = text.device
    correct: dict[str, list[bool]] = {k: [] for k in ("things_base", "things_novel", "stuff_base", "stuff_novel")}
    confusion = np.zeros((len(world), len(world)), dtype=np.int64)
    for image, id_map, segments in tqdm(held_out_scenes(num_scenes, renderer, seed), total=num_scenes, desc="eval CLIP", disable=not progress):
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
        feats = dense_features(model, pixels)[0]  # (320, 16, 16)
        ids = torch.from_numpy(id_map).to(device)
        masks = torch.stack([ids == s["id"] for s in segments])
        emb = mask_pooled_embeddings(feats, cell_weights(masks, feats.shape[-1]), model)
        pred = classify_embeddings(emb, text, class_index, len(world)).tolist()
        for seg, p in zip(segments, pred):
            k = world.index_of_category[seg["category_id"]]
            group = ("things" if world.isthing[k] else "stuff") + ("_novel" if world.is_novel[k] else "_base")
            correct[group].append(p == k)
            confusion[k, p] += 1
    result: dict[str, Any] = {"num_scenes": num_scenes}
    for group, vals in correct.items():
        result[f"acc_{group}"] = round(float(np.mean(vals)), 4) if vals else None
        result[f"n_{group}"] = len(vals)
    all_vals = [v for vals in correct.values() for v in vals]
    things_vals = correct["things_base"] + correct["things_novel"]
    stuff_vals = correct["stuff_base"] + correct["stuff_novel"]
    result["acc_all"] = round(float(np.mean(all_vals)), 4)
    result["acc_things"] = round(float(np.mean(things_vals)), 4) if things_vals else None
    result["acc_stuff"] = round(float(np.mean(stuff_vals)), 4) if stuff_vals else None
    result["per_class_acc"] = {
        world.names[k]: round(float(confusion[k, k] / confusion[k].sum()), 4) for k in range(len(world)) if confusion[k].sum()
    }
    return result