"""Mask-Aware Selective Ensembling (spec section 6) and FC-CLIP's static ensemble (section 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MASEConfig

MODES = ("mase", "fc_clip", "in_vocab", "out_vocab")
THRESHOLD_RULES = ("image_mean", "fixed", "percentile")
GRANULARITIES = ("query", "query_class", "image_class")


@dataclass
class EnsembleResult:
    """Per-query classification of one image.

    Attributes:
        probs: (Q, K + 1) final class distribution, void last.
        labels: (Q,) argmax over K + 1 (K means void).
        scores: (Q,) probability of the label times predicted IoU ** gamma.
        in_vocab_probs: (Q, K) LDP distribution (void removed).
        out_vocab_probs: (Q, K) frozen-CLIP distribution.
        seen_like: (Q,) the queries MASE treated as seen-like (all False outside "mase").
        keep: (Q,) non-void and above the IoU drop threshold.
        mask_quality: (Q,) predicted IoU used for rescoring.
    """

    probs: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    in_vocab_probs: torch.Tensor
    out_vocab_probs: torch.Tensor
    seen_like: torch.Tensor
    keep: torch.Tensor
    mask_quality: torch.Tensor


def _thresholds(values: torch.Tensor, candidates: torch.Tensor, rule: str, fixed: float, percentile: float) -> torch.Tensor:
    if rule == "fixed":
        return values.new_tensor(fixed)
    pool = values[candidates] if candidates.any() else values
    if rule == "image_mean":
        return pool.mean()
    return torch.quantile(pool.float(), percentile / 100.0).to(values.dtype)


def ensemble(
    in_vocab_logits: torch.Tensor,
    out_vocab_logits: torch.Tensor,
    mask_quality: torch.Tensor,
    seen_classes: torch.Tensor,
    cfg: MASEConfig,
) -> EnsembleResult:
    """Combine in-vocabulary (LDP) and out-of-vocabulary (frozen CLIP) predictions of one image.

    Args:
        in_vocab_logits: (Q, K + 1) LDP logits, void last.
        out_vocab_logits: (Q, K) frozen-CLIP logits.
        mask_quality: (Q,) predicted IoU in [0, 1].
        seen_classes: (K,) bool, class overlaps the training vocabulary (FC-CLIP's static split).
        cfg: MASE settings.
    """
    if cfg.mode not in MODES:
        raise ValueError(f"mase.mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"mase.threshold_rule must be one of {THRESHOLD_RULES}, got {cfg.threshold_rule!r}")
    if cfg.granularity not in GRANULARITIES:
        raise ValueError(f"mase.granularity must be one of {GRANULARITIES}, got {cfg.granularity!r}")
    in_logits = in_vocab_logits.float()
    num_classes = in_logits.shape[-1] - 1
    p_in = in_logits[:, :num_classes].softmax(-1)
    p_out = out_vocab_logits.float().softmax(-1)
    p_void = in_logits.softmax(-1)[:, -1]
    iou = mask_quality.float().clamp(0.0, 1.0)
    seen = seen_classes.to(p_in.device).bool()
    if not 0.0 <= cfg.novel_void_suppression <= 1.0:
        raise ValueError(f"mase.novel_void_suppression must be in [0, 1], got {cfg.novel_void_suppression}")
    if cfg.void_threshold is not None and not 0.0 < cfg.void_threshold <= 1.0:
        raise ValueError(f"mase.void_threshold must be in (0, 1] or null, got {cfg.void_threshold}")
    if cfg.novel_void_suppression > 0 and cfg.mode != "in_vocab":
        # LDP was trained on base classes only and calls novel objects void; the frozen CLIP
        # has seen them, so its belief in a novel class lowers void (in_vocab has no CLIP).
        novel_belief = (p_out * (~seen)[None, :]).sum(-1)
        p_void = p_void * (1 - cfg.novel_void_suppression * novel_belief)
    seen_like = torch.zeros_like(p_void, dtype=torch.bool)

    log_in = torch.log(p_in + 1e-8)
    log_out = torch.log(p_out + 1e-8)
    if cfg.mode == "in_vocab":
        class_probs = p_in
    elif cfg.mode == "out_vocab":
        class_probs = p_out
    else:
        if cfg.mode == "fc_clip":
            weight = torch.where(seen, cfg.alpha, cfg.beta)[None, :].expand_as(p_in)
        else:
            conf = p_in.max(-1).values
            candidates = in_logits.argmax(-1) != num_classes
            tau_iou = _thresholds(iou, candidates, cfg.threshold_rule, cfg.iou_threshold, cfg.percentile)
            tau_conf = _thresholds(conf, candidates, cfg.threshold_rule, cfg.conf_threshold, cfg.percentile)
            seen_like = (iou >= tau_iou) & (conf >= tau_conf)
            if cfg.granularity == "query":
                weight = torch.where(seen_like, cfg.alpha, cfg.beta)[:, None].expand_as(p_in)
            elif cfg.granularity == "query_class":
                weight = torch.where(seen_like[:, None] & seen[None, :], cfg.alpha, cfg.beta)
            else:  # image_class: classes confidently predicted somewhere in this image count as seen
                seen_in_image = torch.zeros(num_classes, dtype=torch.bool, device=p_in.device)
                seen_in_image[p_in.argmax(-1)[seen_like]] = True
                weight = torch.where(seen_in_image, cfg.alpha, cfg.beta)[None, :].expand_as(p_in)
        z = (1 - weight) * log_in + weight * log_out
        class_probs = z.softmax(-1)
    probs = torch.cat([class_probs * (1 - p_void)[:, None], p_void[:, None]], dim=-1)
    if cfg.void_threshold is None:
        label_scores, labels = probs.max(-1)
    else:
        label_scores, labels = probs[:, :num_classes].max(-1)
        labels = torch.where(p_void >= cfg.void_threshold, num_classes, labels)
    scores = label_scores * iou.pow(cfg.gamma)
    keep = (labels != num_classes) & (iou >= cfg.drop_iou_threshold)
    return EnsembleResult(probs, labels, scores, p_in, p_out, seen_like, keep, iou)
