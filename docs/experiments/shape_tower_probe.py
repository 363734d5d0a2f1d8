"""Probe that chose the small CLIP's image tower (README, "The shipped small model"; step 7 ships it).

Can a fresh BatchNorm CNN (stride 32) name shapes, base and novel, from mask-pooled dense features
of whole scenes (the path PosSAM's frozen-CLIP classifier uses)? It trains on all 18 classes of the
synthetic world (as the small CLIP does) with a linear class head: the mask-pooled class term on
whole scenes at ``--scale``, plus, with ``--cut-out``, a class term on each thing cut out onto a
flat random-colour background at 64 px. Then it classifies the ground-truth segments of 60 held-out
scenes (small_sam's held-out seed) from their mask-pooled features.

Measured on 2 CPU cores (scale 1, 600 steps, 13 min): with --cut-out, held-out shapes 60 % base,
63 % novel, stuff 92 %; without it (scale 0.5, 900 steps) shapes stay at chance (6-8 %). timm's
resnet10t in place of the CNN (--tower resnet10t, 600 steps, 8 min): shapes 16 % base, 15 % novel,
stuff 100 %: its strided stem loses what the CNN's full-resolution 3x3 convolutions keep.

    python docs/experiments/shape_tower_probe.py --steps 600 --scale 1 --cut-out
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from possam_label.train.small_clip import WorldIndex, _square_window, default_scene_renderer, normalize_pixels
from possam_label.train.small_sam import held_out_scenes


def block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2),
    )


def mask_pooled(features: torch.Tensor, id_map: np.ndarray, segments: list) -> torch.Tensor:
    """(C, g, g) features, the scene's segment-id map -> (M, C) features averaged over each segment."""
    ids = torch.as_tensor(np.asarray(id_map))
    masks = torch.stack([ids == int(s["id"]) for s in segments]).float()[:, None]
    weights = F.adaptive_avg_pool2d(masks, features.shape[-1])[:, 0]
    return torch.einsum("mhw,chw->mc", weights, features) / weights.sum((1, 2)).clamp(min=1e-6)[:, None]


class _TimmFeatures(nn.Module):
    """A timm model's stride-32 feature map (``forward_features``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class Scenes(torch.utils.data.IterableDataset):
    """8 rendered scenes per item, with up to 48 of their things cut out at 64 px."""

    def __iter__(self):
        rng = np.random.default_rng([9, 0, 0xD5])
        render, world = default_scene_renderer(), WorldIndex()
        while True:
            scenes = [render(rng) for _ in range(8)]
            crops, labels = [], []
            for image, id_map, segments in scenes:
                for seg in segments:
                    k = world.index_of_category[seg["category_id"]]
                    if not world.isthing[k]:
                        continue
                    x, y, w, h = seg["bbox"]
                    x0, y0, side = _square_window(x + w / 2, y + h / 2, int(max(w, h) * rng.uniform(1.1, 1.5)), id_map.shape[0])
                    window = image[y0 : y0 + side, x0 : x0 + side].copy()
                    window[id_map[y0 : y0 + side, x0 : x0 + side] != seg["id"]] = rng.integers(0, 256, 3).astype(np.uint8)
                    crop = torch.from_numpy(np.ascontiguousarray(window)).permute(2, 0, 1)[None].float()
                    crops.append(F.interpolate(crop, size=64, mode="bilinear", align_corners=False)[0])
                    labels.append(k)
            yield scenes, torch.stack(crops[:48]), torch.tensor(labels[:48])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps (8 scenes each)")
    parser.add_argument("--scale", type=float, default=1.0, help="scene scale fed to the CNN (1: 256 px)")
    parser.add_argument("--cut-out", action="store_true", help="add the class term on cut-out things")
    parser.add_argument("--tower", default="cnn", help="'cnn' (the ten-convolution BatchNorm CNN) or a timm model name, e.g. resnet10t")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    world = WorldIndex()
    if args.tower == "cnn":
        trunk = nn.Sequential(block(3, 24), block(24, 48), block(48, 96), block(96, 160), block(160, 256),
                              nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU())
    else:
        import timm

        timm_model = timm.create_model(args.tower, pretrained=False, num_classes=0, global_pool="")
        trunk = _TimmFeatures(timm_model)
    with torch.no_grad():
        width = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
    head = nn.Linear(width, len(world))
    opt = torch.optim.AdamW([*trunk.parameters(), *head.parameters()], lr=2e-3, weight_decay=1e-4)
    batches = iter(torch.utils.data.DataLoader(Scenes(), batch_size=None, num_workers=1, prefetch_factor=4))

    def scene_pixels(images) -> torch.Tensor:
        x = torch.stack([torch.as_tensor(np.asarray(im)).permute(2, 0, 1).float() for im in images])
        return normalize_pixels(F.interpolate(x, scale_factor=args.scale, mode="bilinear", align_corners=False))

    start, history = time.time(), []
    for step in range(args.steps):
        scenes, crops, crop_labels = next(batches)
        trunk.train()
        features = trunk(scene_pixels([s[0] for s in scenes]))
        pooled = torch.cat([mask_pooled(f, id_map, segs) for f, (_, id_map, segs) in zip(features, scenes)])
        labels = torch.tensor([world.index_of_category[int(s["category_id"])] for _, _, segs in scenes for s in segs])
        is_thing = torch.tensor([world.isthing[int(k)] for k in labels])
        logits = head(pooled)
        weight = torch.where(is_thing, 2.0, 1.0)
        loss = (F.cross_entropy(logits, labels, reduction="none") * weight).sum() / weight.sum()
        if args.cut_out:
            loss = loss + F.cross_entropy(head(trunk(normalize_pixels(crops)).mean((2, 3))), crop_labels)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append([loss.item(), (logits.argmax(1) == labels)[is_thing].float().mean().item()])
        if (step + 1) % 50 == 0:
            print(step + 1, round(time.time() - start), "loss %.3f dense thing accuracy %.3f" % tuple(np.mean(history[-50:], 0)), flush=True)
    trunk.eval()
    correct = {"things_base": [], "things_novel": [], "stuff": []}
    with torch.no_grad():
        for image, id_map, segments in held_out_scenes(60, None):
            predicted = head(mask_pooled(trunk(scene_pixels([image]))[0], id_map, segments)).argmax(1).tolist()
            for seg, p in zip(segments, predicted):
                k = world.index_of_category[seg["category_id"]]
                group = "stuff" if not world.isthing[k] else ("things_novel" if world.is_novel[k] else "things_base")
                correct[group].append(p == k)
    print(json.dumps({g: {"accuracy": round(float(np.mean(v)), 3), "n": len(v)} for g, v in correct.items()}))


if __name__ == "__main__":
    main()
