"""Tests of the training losses: point sampling, Hungarian matching and SetCriterion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from possam_label.config import TrainConfig
from possam_label.train.criterion import SetCriterion, mask_iou_targets, target_coverage_fraction, total_loss
from possam_label.train.matcher import HungarianMatcher, pairwise_bce_cost, pairwise_dice_cost
from possam_label.train.point_sampling import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
    uncertainty_from_logits,
)

K = 6  # classes in the toy vocabulary
Q = 8  # queries
CONFIDENT = 20.0


def random_rectangles(num: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(num, size, size) bool masks: distinct random rectangles at least size/4 wide."""
    masks = torch.zeros(num, size, size, dtype=torch.bool)
    for i in range(num):
        y0, x0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
        h, w = (int(v) for v in torch.randint(size // 4, size // 2, (2,), generator=generator))
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def make_targets(counts: list[int], size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in counts:
        labels = torch.randperm(K, generator=g)[:n]
        targets.append({"labels": labels, "masks": random_rectangles(n, size, g)})
    return targets


def planted_outputs(targets, size: int, seed: int = 1, iou_value: float = 1.0):
    """Predictions equal to the targets, placed at random query slots; returns (outputs, perms)."""
    g = torch.Generator().manual_seed(seed)
    batch = len(targets)
    logits = torch.full((batch, Q, K + 1), -CONFIDENT)
    logits[:, :, K] = CONFIDENT  # every query says void ...
    masks = torch.full((batch, Q, size, size), -CONFIDENT)
    pred_iou = torch.zeros(batch, Q)
    perms = []
    for b, t in enumerate(targets):
        slots = torch.randperm(Q, generator=g)[: len(t["labels"])]
        perms.append(slots)
        for j, q in enumerate(slots):  # ... except the planted ones
            logits[b, q, K] = -CONFIDENT
            logits[b, q, t["labels"][j]] = CONFIDENT
            masks[b, q] = torch.where(t["masks"][j], CONFIDENT, -CONFIDENT)
            pred_iou[b, q] = iou_value
    return {"pred_logits": logits, "pred_masks": masks, "pred_iou": pred_iou, "aux_outputs": []}, perms


def make_criterion(**overrides) -> SetCriterion:
    args = dict(num_points=3000, oversample_ratio=3.0, importance_sample_ratio=0.75)
    args.update(overrides)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=args["num_points"])
    return SetCriterion(K, matcher, **args)


# ------------------------------------------------------------------------------ point sampling
def test_point_sample_reads_pixel_centres_bilinearly():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]  # (1, 1, 2, 2)
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]])  # (x, y)
    assert torch.allclose(point_sample(image, coords), torch.tensor([[[1.0, 2.0, 3.0, 2.5]]]))
    grid = coords.view(1, 2, 2, 2)
    assert point_sample(image, grid).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="coords"):
        point_sample(image, torch.rand(1, 4, 3))


def test_importance_sampling_prefers_uncertain_points():
    torch.manual_seed(0)
    logits = torch.full((2, 1, 32, 32), 10.0)
    logits[:, :, :, 16:26] = 0.0  # an uncertain vertical band, about 30% of the area
    coords = get_uncertain_point_coords_with_randomness(logits, uncertainty_from_logits, 1000, 3.0, 0.75)
    assert coords.shape == (2, 1000, 2) and coords.min() >= 0 and coords.max() <= 1
    in_band = ((coords[..., 0] > 0.5) & (coords[..., 0] < 26 / 32)).float().mean()
    assert in_band > 0.7  # uniform sampling would give ~0.31
    uniform = get_uncertain_point_coords_with_randomness(logits, uncertainty_from_logits, 1000, 3.0, 0.0)
    assert ((uniform[..., 0] > 0.5) & (uniform[..., 0] < 26 / 32)).float().mean() < 0.45


# -------------------------------------------------------------------------------------- matcher
def test_pairwise_costs_match_direct_formulas():
    torch.manual_seed(0)
    pred, target = torch.randn(5, 40) * 3, (torch.rand(3, 40) > 0.5).float()
    bce = pairwise_bce_cost(pred, target)
    dice = pairwise_dice_cost(pred, target)
    for q in range(5):
        for n in range(3):
            expected = F.binary_cross_entropy_with_logits(pred[q], target[n])
            assert torch.isclose(bce[q, n], expected, atol=1e-5)
            p = pred[q].sigmoid()
            expected_dice = 1 - (2 * (p * target[n]).sum() + 1) / (p.sum() + target[n].sum() + 1)
            assert torch.isclose(dice[q, n], expected_dice, atol=1e-5)


def test_matcher_finds_planted_permutation_and_handles_empty_images():
    torch.manual_seed(0)
    targets = make_targets([5, 0, 3], size=32)
    outputs, perms = planted_outputs(targets, size=32)
    indices = HungarianMatcher(num_points=2000)(outputs, targets)
    for (query_idx, target_idx), slots, t in zip(indices, perms, targets):
        assert query_idx.dtype == torch.int64 and len(query_idx) == len(t["labels"])
        assert {int(q): int(j) for q, j in zip(query_idx, target_idx)} == {int(q): j for j, q in enumerate(slots)}
    assert indices[1][0].numel() == 0 and indices[1][1].numel() == 0


@pytest.mark.parametrize("only", ["class", "mask", "dice"])
def test_each_cost_term_alone_recovers_the_permutation(only):
    torch.manual_seed(0)
    targets = make_targets([4], size=32)
    outputs, perms = planted_outputs(targets, size=32)
    if only != "class":
        outputs["pred_logits"] = torch.zeros_like(outputs["pred_logits"])  # no class information
    else:
        outputs["pred_masks"] = torch.zeros_like(outputs["pred_masks"])  # no mask information
    costs = {"class": (1.0, 0.0, 0.0), "mask": (0.0, 1.0, 0.0), "dice": (0.0, 0.0, 1.0)}[only]
    (query_idx, target_idx), = HungarianMatcher(*costs, num_points=2000)(outputs, targets)
    assert {int(q): int(j) for q, j in zip(query_idx, target_idx)} == {int(q): j for j, q in enumerate(perms[0])}


def test_matcher_reads_targets_at_a_different_resolution():
    torch.manual_seed(0)
    targets = make_targets([4, 2], size=64)
    outputs, perms = planted_outputs(targets, size=64)
    # Predictions at stride 4 of the targets, as in the model.
    outputs["pred_masks"] = F.interpolate(outputs["pred_masks"], size=(16, 16), mode="bilinear", align_corners=False)
    outputs["pred_logits"] = torch.zeros_like(outputs["pred_logits"])
    indices = HungarianMatcher(num_points=3000)(outputs, targets)
    for (query_idx, target_idx), slots in zip(indices, perms):
        assert {int(q): int(j) for q, j in zip(query_idx, target_idx)} == {int(q): j for j, q in enumerate(slots)}


# ------------------------------------------------------------------------------------ criterion
def test_perfect_prediction_has_near_zero_loss_and_wrong_prediction_does_not():
    torch.manual_seed(0)
    targets = make_targets([4, 3], size=96)
    perfect, perms = planted_outputs(targets, size=96)
    criterion = make_criterion(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, iou_weight=1.0)
    losses, indices = criterion(perfect, targets, return_indices=True)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_iou"}
    assert losses["loss_ce"] < 1e-6
    # Bilinear reads at mask borders give soft labels there (and importance sampling picks
    # exactly those points), so BCE and Dice stay a little above 0.
    assert losses["loss_mask"] < 0.1 and losses["loss_dice"] < 0.08
    assert losses["loss_iou"] < 1e-10
    for (query_idx, target_idx), slots in zip(indices[0], perms):
        assert sorted(int(q) for q in query_idx) == sorted(int(q) for q in slots)

    wrong = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in perfect.items()}
    wrong["pred_masks"] = -wrong["pred_masks"]  # inverted masks
    wrong["pred_logits"] = wrong["pred_logits"].roll(1, dims=-1)  # every class shifted by one
    wrong["pred_iou"] = 1.0 - wrong["pred_iou"]
    bad = criterion(wrong, targets)
    assert bad["loss_ce"] > 10 and bad["loss_mask"] > 5 and bad["loss_dice"] > 0.7
    assert bad["loss_iou"] > 0.1


def test_aux_stages_are_matched_and_reported_separately():
    torch.manual_seed(0)
    targets = make_targets([3, 2], size=32)
    final, _ = planted_outputs(targets, size=32, seed=1)
    aux_good, _ = planted_outputs(targets, size=32, seed=7)  # other slots: needs its own matching
    aux_bad = {k: torch.zeros_like(v) if torch.is_tensor(v) else v for k, v in final.items()}
    final["aux_outputs"] = [aux_good, aux_bad]
    losses, indices = make_criterion(dice_weight=1.0)(final, targets, return_indices=True)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice", "iou") for s in ("", "_0", "_1")}
    assert len(indices) == 3
    assert losses["loss_ce_0"] < 1e-4 and losses["loss_dice_0"] < 0.2 * losses["loss_dice_1"]
    assert losses["loss_ce_1"] > 1 and losses["loss_dice_1"] > 0.5
    assert not torch.equal(indices[0][0][0], indices[1][0][0])
    total = total_loss(losses)
    assert torch.isclose(total, sum(losses.values()))


def test_gradients_reach_every_prediction_tensor():
    torch.manual_seed(0)
    targets = make_targets([3, 1], size=32)
    base, _ = planted_outputs(targets, size=32)
    stage = lambda: {k: torch.randn_like(v).requires_grad_(True) for k, v in base.items() if torch.is_tensor(v)}
    outputs, aux = stage(), stage()
    with torch.no_grad():
        outputs["pred_iou"].uniform_(0, 1)
        aux["pred_iou"].uniform_(0, 1)
    outputs["aux_outputs"] = [aux]
    total = total_loss(make_criterion()(outputs, targets))
    total.backward()
    for tensors in (outputs, aux):
        for key in ("pred_logits", "pred_masks", "pred_iou"):
            grad = tensors[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key


def test_void_weight_changes_ce_as_a_weighted_mean():
    torch.manual_seed(0)
    targets = make_targets([2], size=32)
    outputs, _ = planted_outputs(targets, size=32)
    outputs["pred_logits"] = torch.randn(1, Q, K + 1)
    results = {}
    for void_weight in (0.1, 1.0):
        criterion = make_criterion(void_weight=void_weight, class_weight=1.0)
        losses, indices = criterion(outputs, targets, return_indices=True)
        query_idx, target_idx = indices[0][0]
        classes = torch.full((Q,), K)
        classes[query_idx] = targets[0]["labels"][target_idx]
        per_query = F.cross_entropy(outputs["pred_logits"][0], classes, reduction="none")
        weight = torch.where(classes == K, void_weight, 1.0)
        assert torch.isclose(losses["loss_ce"], (per_query * weight).sum() / weight.sum(), atol=1e-6)
        results[void_weight] = float(losses["loss_ce"])
    assert abs(results[0.1] - results[1.0]) > 1e-3


def test_iou_targets_of_a_crafted_case():
    # Prediction on a 4x4 grid (stride 4 of a 16x16 target): the top-left 2x2 cells, i.e. the
    # 8x8 top-left pixels once upsampled.
    pred = torch.full((1, 4, 4), -5.0)
    pred[0, :2, :2] = 5.0
    gt_wide = torch.zeros(1, 16, 16, dtype=torch.bool)
    gt_wide[0, :8, :12] = True  # 96 px, contains the 64 predicted px -> IoU 64 / 96
    gt_short = torch.zeros(1, 16, 16, dtype=torch.bool)
    gt_short[0, :6, :8] = True  # 48 px inside the prediction -> IoU 48 / 64 (not a multiple of 4)
    for gt, expected in ((gt_wide, 2 / 3), (gt_short, 0.75)):
        fraction = target_coverage_fraction(gt.float(), (4, 4))
        assert torch.isclose(mask_iou_targets(pred, fraction), torch.tensor([expected]))
    assert mask_iou_targets(torch.full((1, 4, 4), -1.0), torch.zeros(1, 4, 4)).item() == 1.0

    # Through the criterion: one image, target 0 = gt_wide, query 5 predicts it.
    logits = torch.full((1, Q, K + 1), -CONFIDENT)
    logits[..., K] = CONFIDENT
    logits[0, 5, K], logits[0, 5, 2] = -CONFIDENT, CONFIDENT
    masks = torch.full((1, Q, 4, 4), -5.0)
    masks[0, 5] = pred[0]
    pred_iou = torch.full((1, Q), 0.1)
    pred_iou[0, 5] = 0.5
    outputs = {"pred_logits": logits, "pred_masks": masks, "pred_iou": pred_iou}
    targets = [{"labels": torch.tensor([2]), "masks": gt_wide}]
    with_unmatched = make_criterion(iou_weight=1.0)(outputs, targets)["loss_iou"]
    expected = ((0.5 - 2 / 3) ** 2 + (Q - 1) * 0.1**2) / Q
    assert math.isclose(float(with_unmatched), expected, rel_tol=1e-5)
    matched_only = make_criterion(iou_weight=2.0, iou_supervise_unmatched=False)(outputs, targets)["loss_iou"]
    assert math.isclose(float(matched_only), 2.0 * (0.5 - 2 / 3) ** 2, rel_tol=1e-5)
    smooth = make_criterion(iou_loss="smooth_l1")(outputs, targets)["loss_iou"]
    assert math.isclose(float(smooth), (abs(0.5 - 2 / 3) - 0.05 + (Q - 1) * 0.5 * 0.1**2 / 0.1) / Q, rel_tol=1e-5)


def test_empty_target_images():
    torch.manual_seed(0)
    targets = make_targets([0, 0], size=32)
    outputs, _ = planted_outputs(targets, size=32)
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items() if torch.is_tensor(v)}
    losses = make_criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    assert losses["loss_ce"] < 1e-4 and losses["loss_iou"] == 0  # all void, all IoU 0: correct
    total_loss(losses).backward()
    assert outputs["pred_masks"].grad is not None

    mixed = make_targets([0, 3], size=32)
    mixed_outputs, _ = planted_outputs(mixed, size=32)
    assert all(torch.isfinite(v) for v in make_criterion()(mixed_outputs, mixed).values())


def test_deterministic_with_a_seed():
    targets = make_targets([3, 2], size=32)
    outputs, _ = planted_outputs(targets, size=32)
    outputs["pred_masks"] = outputs["pred_masks"] * 0.1 + torch.randn_like(outputs["pred_masks"])
    criterion = make_criterion()

    def run(seed: int) -> dict[str, float]:
        torch.manual_seed(seed)
        return {k: float(v) for k, v in criterion(outputs, targets).items()}

    assert run(3) == run(3)
    assert run(3)["loss_mask"] != run(4)["loss_mask"]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert {k: float(v) for k, v in criterion(outputs, targets, generator=g1).items()} == {
        k: float(v) for k, v in criterion(outputs, targets, generator=g2).items()
    }


def test_num_masks_normalization():
    torch.manual_seed(0)
    targets = make_targets([2], size=32)
    outputs, _ = planted_outputs(targets, size=32)
    outputs["pred_masks"] = torch.zeros_like(outputs["pred_masks"])  # BCE = log 2 at every point
    losses = make_criterion(mask_weight=1.0)(outputs, targets)
    assert math.isclose(float(losses["loss_mask"]), math.log(2), rel_tol=1e-5)  # 2 masks / 2


def test_from_config_and_input_errors():
    criterion = SetCriterion.from_config(TrainConfig(), num_classes=K)
    assert criterion.weights == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0, "loss_iou": 1.0}
    assert criterion.matcher.num_points == 12544 and criterion.class_weights[-1] == pytest.approx(0.1)
    targets = make_targets([2], size=32)
    outputs, _ = planted_outputs(targets, size=32)
    bad_labels = [{"labels": torch.tensor([0, K]), "masks": targets[0]["masks"]}]
    with pytest.raises(ValueError, match="outside"):
        criterion(outputs, bad_labels)
    with pytest.raises(ValueError, match="num_classes \\+ 1"):
        SetCriterion.from_config(TrainConfig(), num_classes=K + 1)(outputs, targets)
    with pytest.raises(ValueError, match="iou_loss"):
        make_criterion(iou_loss="l1")


def test_void_pixels_count_for_no_mask():
    """A target's ``ignore`` pixels (void: unlabeled, crowd, pseudo-labels below --min-score) are
    neither object nor background: masks that claim them cost nothing more; without the void
    mask the same claim costs as much as a wrong mask."""
    size = 96
    targets = make_targets([3, 2], size=size, seed=4)
    void = torch.zeros(size, size, dtype=torch.bool)
    # A band of unknown pixels across the top, smaller than any target: the matcher (which reads
    # void as background, as Mask2Former's does) still pairs each target with its planted query.
    void[:4] = True
    for t in targets:
        t["masks"] &= ~void  # as the sources build them: void pixels belong to no segment
    perfect, perms = planted_outputs(targets, size=size)
    claims_void = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in perfect.items()}
    for b, slots in enumerate(perms):
        claims_void["pred_masks"][b, slots] = torch.where(void, CONFIDENT, claims_void["pred_masks"][b, slots])
    criterion = make_criterion(importance_sample_ratio=0.0)  # uniform points: the same for every prediction

    def losses(outputs, with_void: bool) -> dict[str, float]:
        given = [{**t, "ignore": void} if with_void else dict(t) for t in targets]
        return {k: float(v) for k, v in criterion(outputs, given, generator=torch.Generator().manual_seed(0)).items()}

    base, claimed = losses(perfect, True), losses(claims_void, True)
    assert claimed["loss_mask"] == pytest.approx(base["loss_mask"], abs=1e-6)
    assert claimed["loss_dice"] == pytest.approx(base["loss_dice"], abs=1e-6)
    counted = losses(claims_void, False)
    assert counted["loss_mask"] > 5 * base["loss_mask"] + 0.5
    assert counted["loss_dice"] > base["loss_dice"] + 0.02
    assert claimed["loss_ce"] == counted["loss_ce"] == base["loss_ce"] < 1e-6  # same matching, right classes
