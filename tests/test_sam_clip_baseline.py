"""The training-free SAM + CLIP two-stage baseline (possam_label.baselines.sam_clip)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from conftest import unavailable

from possam_label.config import load_config
from possam_label.config_mapping import ConfigError, merge, parse_assignments
from possam_label.baselines.sam_clip import SamClipPredictor, build_sam, merge_masks
from possam_label.model.weights import WeightsError
from possam_label.types import PanopticPrediction
from possam_label.vocab import load_vocabulary

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "possam_tiny.yaml"
SMALL = REPO / "configs" / "possam_small.yaml"
SMALL_ASSETS = REPO / "possam_label" / "assets" / "small"
VOCAB = "cat,dog,grass [stuff],sky [stuff]"
# Random weights give large, nested masks: let every mask through SAM's filters, and keep a mask
# when 1 % of it is still free, so that several segments survive the merge.
TINY_OVERRIDES = {
    "baseline": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4, "points_per_batch": 16},
    "postprocess": {"overlap_threshold": 0.01},
}


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # Smooth random images: the second one is larger than the tiny SAM input (128) and portrait.
    out = []
    for h, w in ((96, 128), (150, 100)):
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        out.append(np.ascontiguousarray(np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w]))
    return out


@pytest.fixture(scope="module", params=["mask_pooled", "crop"])
def tiny_predictor(request: pytest.FixtureRequest) -> SamClipPredictor:
    torch.manual_seed(0)
    overrides = {**TINY_OVERRIDES, "baseline": {**TINY_OVERRIDES["baseline"], "classify": request.param, "crop_size": 64}}
    predictor = SamClipPredictor.from_config(TINY, device="cpu", overrides=overrides, load_backbones=False)
    # The random masks all span the image, so SAM's box NMS (0.7) would keep one per image.
    predictor.mask_generator.box_nms_thresh = 1.0
    return predictor


def _check_prediction(pred: PanopticPrediction, image: np.ndarray, vocab_spec: str) -> None:
    vocab = load_vocabulary(vocab_spec)
    assert pred.panoptic_map.shape == image.shape[:2]
    assert pred.panoptic_map.dtype == np.int32
    ids = [s.id for s in pred.segments]
    assert ids == list(range(1, len(ids) + 1))
    assert set(np.unique(pred.panoptic_map).tolist()) - {0} == set(ids)
    stuff_classes = [s.category for s in pred.segments if not s.isthing]
    assert len(stuff_classes) == len(set(stuff_classes)), "stuff of one class must be one segment"
    for s in pred.segments:
        mask = pred.panoptic_map == s.id
        assert s.area == int(mask.sum()) > 0
        rows, cols = np.nonzero(mask)
        assert s.bbox == [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]
        k = vocab.index_of(s.category)
        assert s.category_id == vocab.category_ids[k] and s.isthing == vocab.isthing[k]
        assert 0.0 <= s.in_vocab_prob <= 1.0 and s.in_vocab_prob == s.out_vocab_prob
        assert s.score == pytest.approx(s.in_vocab_prob * s.mask_quality, rel=1e-5)


def test_tiny_random_weights_give_valid_panoptic_outputs(tiny_predictor: SamClipPredictor) -> None:
    images = _images()
    preds = tiny_predictor.predict(images, vocabulary="cat,dog", batch_size=2)
    assert len(preds) == 2
    for pred, image in zip(preds, images):
        _check_prediction(pred, image, "cat,dog")
    # Thing instances stay apart (the random masks are nested, so few survive the merge).
    assert sum(len(p.segments) for p in preds) >= 3
    # Batching changes nothing: one image at a time gives the same map.
    single = tiny_predictor.predict(images[1:], vocabulary="cat,dog", batch_size=1)
    np.testing.assert_array_equal(single[0].panoptic_map, preds[1].panoptic_map)
    # A vocabulary with stuff: one segment per stuff class.
    mixed = tiny_predictor.predict(images[:1], vocabulary=VOCAB)
    _check_prediction(mixed[0], images[0], VOCAB)
    assert mixed[0].segments
    identity = tiny_predictor.weights_identity()
    assert identity["sam"] is None and identity["clip"] is None
    assert identity["method"] == f"sam_clip_baseline/{tiny_predictor.config.baseline.classify}"


def test_object_mask_threshold_drops_candidate_masks_and_its_old_name_is_refused() -> None:
    """``--set baseline.object_mask_threshold=T`` reaches the merge: candidates scored <= T are gone.
    ``baseline.min_score``, its name before, is refused with the file and the new name."""
    image = _images()[0]
    overrides = merge(TINY_OVERRIDES, parse_assignments(["baseline.object_mask_threshold=0.0"]))
    torch.manual_seed(0)
    predictor = SamClipPredictor.from_config(TINY, device="cpu", overrides=overrides, load_backbones=False)
    predictor.mask_generator.box_nms_thresh = 1.0  # as in the tiny_predictor fixture
    every = predictor.predict([image], vocabulary="cat,dog")[0].segments
    assert len(every) >= 2
    # Between the scores of the segments kept at 0, set like the command line sets it.
    threshold = float(np.median([s.score for s in every]))
    predictor.config = load_config(TINY, merge(TINY_OVERRIDES, parse_assignments([f"baseline.object_mask_threshold={threshold}"])))
    assert predictor.config.baseline.object_mask_threshold == threshold
    kept = predictor.predict([image], vocabulary="cat,dog")[0].segments
    assert 0 < len(kept) < len(every) and all(s.score > threshold - 1e-6 for s in kept)
    with pytest.raises(ConfigError, match=r"possam_tiny\.yaml: config key baseline\.min_score was renamed baseline\.object_mask_threshold"):
        SamClipPredictor.from_config(TINY, device="cpu", overrides=parse_assignments(["baseline.min_score=0.5"]), load_backbones=False)


def test_batched_encoder_serves_the_mask_generator(tiny_predictor: SamClipPredictor) -> None:
    """Precomputed encoder inputs are exactly those SamPredictor builds, so each is used once."""
    images = [tiny_predictor._working_image(i, im) for i, im in enumerate(_images())]
    encoder = tiny_predictor.sam.image_encoder
    inputs = tiny_predictor._sam_inputs(images)
    encoder.precompute(inputs)
    expected = encoder.encode(inputs)
    predictor = tiny_predictor.mask_generator.predictor
    for i, image in enumerate(images):
        predictor.set_image(image)
        assert len(encoder._ready) == len(images) - 1 - i
        torch.testing.assert_close(predictor.features, expected[i : i + 1])
    encoder.clear()


def test_classify_masks_gives_class_probabilities(tiny_predictor: SamClipPredictor) -> None:
    image = _images()[1]  # larger than the SAM input: masks follow the image to the working size
    masks = [np.zeros(image.shape[:2], bool) for _ in range(3)]
    masks[0][:50] = True
    masks[1][60:120, 20:80] = True
    masks[2][140:, 90:] = True
    probs = tiny_predictor.classify_masks(image, masks, vocabulary=VOCAB)
    assert probs.shape == (3, 4)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="mask 0: expected a non-empty bool mask"):
        tiny_predictor.classify_masks(image, [np.zeros((10, 10), bool)], vocabulary=VOCAB)


def test_mask_pooling_uses_the_padded_frame() -> None:
    """A mask covering exactly dense cells (rows 0-1, cols 1-2) pools exactly those cells."""
    torch.manual_seed(0)
    predictor = SamClipPredictor.from_config(TINY, device="cpu", overrides=TINY_OVERRIDES, load_backbones=False)
    # 96x128 working image in a 128x128 padded square; the tiny CLIP's dense grid is 4x4 (32 px cells).
    dense = torch.randn(predictor.clip.dense_channels, 4, 4)
    mask = np.zeros((96, 128), bool)
    mask[0:64, 32:96] = True
    got = predictor._mask_pooled_embeddings(dense, [mask])
    want = predictor.clip.embed_pooled(dense[:, 0:2, 1:3].mean(dim=(1, 2))[None]).float()
    torch.testing.assert_close(got, want)
    # A mask smaller than half a cell falls back to its soft coverage instead of pooling nothing.
    speck = np.zeros((96, 128), bool)
    speck[40:44, 40:44] = True
    assert torch.isfinite(predictor._mask_pooled_embeddings(dense, [speck])).all()


def test_masked_crops_fill_outside_with_clip_mean() -> None:
    torch.manual_seed(0)
    overrides = {**TINY_OVERRIDES, "baseline": {**TINY_OVERRIDES["baseline"], "classify": "crop", "crop_size": 32, "crop_context": 0.5}}
    predictor = SamClipPredictor.from_config(TINY, device="cpu", overrides=overrides, load_backbones=False)
    image = np.zeros((100, 120, 3), np.uint8)
    image[:] = (0, 0, 255)  # blue everywhere, red square of 20 px at rows 40-59, cols 30-49
    image[40:60, 30:50] = (255, 0, 0)
    mask = np.zeros((100, 120), bool)
    mask[40:60, 30:50] = True
    crops = predictor.masked_crops(image, [mask], [[30.0, 40.0, 19.0, 19.0]])
    assert crops.shape == (1, 3, 32, 32)
    # Side 20 * (1 + 2 * 0.5) = 40 px around the square: its middle half is the red mask.
    torch.testing.assert_close(crops[0, :, 12:20, 12:20], torch.tensor([255.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 8, 8))
    mean = predictor.clip.pixel_mean.view(3, 1, 1)
    torch.testing.assert_close(crops[0, :, :4, :4], mean.expand(3, 4, 4))  # blue outside the mask is blanked
    # A box at the image corner: the part of the square outside the image is the mean too.
    corner = np.zeros((100, 120), bool)
    corner[0:10, 0:10] = True
    crops = predictor.masked_crops(image, [corner], [[0.0, 0.0, 9.0, 9.0]])
    torch.testing.assert_close(crops[0, :, :4, :4], mean.expand(3, 4, 4))


def test_merge_masks_rules() -> None:
    h, w = 20, 20
    thing_a = np.zeros((h, w), bool)
    thing_a[0:10, 0:10] = True
    thing_b = np.zeros((h, w), bool)
    thing_b[0:10, 5:15] = True  # half overlaps thing_a
    thing_c = np.zeros((h, w), bool)
    thing_c[10:12, 0:2] = True  # 4 pixels
    sky_1 = np.zeros((h, w), bool)
    sky_1[15:20, 0:10] = True
    sky_2 = np.zeros((h, w), bool)
    sky_2[15:20, 10:20] = True
    weak = np.zeros((h, w), bool)
    weak[12:15, 12:20] = True
    masks = [thing_a, thing_b, thing_c, sky_1, sky_2, weak]
    boxes = []
    for m in masks:
        rows, cols = np.nonzero(m)
        boxes.append([float(cols.min()), float(rows.min()), float(cols.max() - cols.min()), float(rows.max() - rows.min())])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.05])
    labels = np.array([0, 0, 0, 1, 1, 0])
    isthing = [True, False]
    panoptic, segments = merge_masks(masks, boxes, scores, labels, isthing, overlap_threshold=0.6, min_segment_area=5, object_mask_threshold=0.1)
    # thing_b keeps only half of itself (< 0.6) -> skipped; thing_c is below min_segment_area;
    # the two sky masks merge into one segment; the weak mask is below object_mask_threshold (void).
    assert [(s.id, s.label, s.mask_index) for s in segments] == [(1, 0, 0), (2, 1, 3)]
    assert (panoptic == 1).sum() == 100 and (panoptic[thing_a] == 1).all()
    assert (panoptic[sky_1 | sky_2] == 2).all() and (panoptic == 2).sum() == 100
    assert (panoptic[weak] == 0).all() and (panoptic[5:10, 10:15] == 0).all()
    # With a permissive threshold the second thing becomes its own instance on its free half.
    panoptic, segments = merge_masks(masks, boxes, scores, labels, isthing, overlap_threshold=0.4)
    assert [s.mask_index for s in segments] == [0, 1, 2, 3, 5]
    assert (panoptic[0:10, 10:15] == 2).all() and (panoptic[0:10, 5:10] == 1).all()


def _random_sam(out_chans: int, mlp_dim: int, heads: int, iou_hidden: int, cfg_path: Path) -> Sam:
    cfg = load_config(cfg_path).sam.resolved()
    grid = cfg.img_size // cfg.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
            mlp_ratio=4.0, out_chans=out_chans, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=cfg.window_size, global_attn_indexes=tuple(cfg.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(embed_dim=out_chans, image_embedding_size=(grid, grid), input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            transformer_dim=out_chans,
            transformer=TwoWayTransformer(depth=2, embedding_dim=out_chans, mlp_dim=mlp_dim, num_heads=heads),
            iou_head_hidden_dim=iou_hidden,
        ),
    ).eval()


@pytest.mark.parametrize("mlp_ratio,iou_hidden_ratio", [(8, 2), (4, 1)])
def test_build_sam_infers_decoder_sizes_from_the_checkpoint(tmp_path: Path, mlp_ratio: int, iou_hidden_ratio: int) -> None:
    """Official-style (MLP 8x, IoU head 2x) and small-style (4x, 1x) decoders both load exactly."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    out_chans = load_config(TINY).sam.out_chans
    source = _random_sam(out_chans, mlp_ratio * out_chans, max(1, out_chans // 32), iou_hidden_ratio * out_chans, TINY)
    path = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_sam(load_config(TINY).sam, str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    embeddings = torch.randn(1, out_chans, 8, 8)
    points = (torch.tensor([[[30.0, 40.0]]]), torch.ones(1, 1, dtype=torch.int))
    sparse, dense = source.prompt_encoder(points=points, boxes=None, masks=None)
    want = source.mask_decoder(embeddings, source.prompt_encoder.get_dense_pe(), sparse, dense, True)
    got = loaded.mask_decoder(embeddings, loaded.prompt_encoder.get_dense_pe(), sparse, dense, True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_build_sam_rejects_encoder_only_and_misfit_checkpoints(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    out_chans = load_config(TINY).sam.out_chans
    state = _random_sam(out_chans, 4 * out_chans, 1, out_chans, TINY).state_dict()
    encoder_only = tmp_path / "encoder_only.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("image_encoder.")}, str(encoder_only))
    with pytest.raises(WeightsError, match=r"encoder_only\.safetensors.*prompt_encoder\.\*.*mask_decoder\.\*"):
        build_sam(load_config(TINY).sam, str(encoder_only))
    # The tiny checkpoint does not fit the small config's encoder.
    full = tmp_path / "tiny_sam.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(full))
    with pytest.raises(WeightsError, match=r"tiny_sam\.safetensors: does not fit"):
        build_sam(load_config(SMALL).sam, str(full))
    with pytest.raises(WeightsError, match="not found"):
        build_sam(load_config(TINY).sam, str(tmp_path / "missing.pth"))


def test_bad_inputs_are_named() -> None:
    torch.manual_seed(0)
    predictor = SamClipPredictor.from_config(TINY, device="cpu", overrides=TINY_OVERRIDES, load_backbones=False)
    with pytest.raises(ValueError, match="image 1: expected an \\(H, W, 3\\) uint8"):
        predictor.predict([_images()[0], np.zeros((10, 10), np.uint8)], vocabulary=VOCAB)
    with pytest.raises(ValueError, match="baseline.classify"):
        SamClipPredictor.from_config(TINY, device="cpu", overrides={"baseline": {"classify": "pixels"}}, load_backbones=False)


# ------------------------------------------------------------------------ shipped small model
SMALL_SAM = SMALL_ASSETS / "sam_small.safetensors"
SMALL_CLIP = SMALL_ASSETS / "clip_small.safetensors"
WORLD_VOCAB = REPO / "possam_label" / "assets" / "synthetic_world" / "vocab.yaml"
HELD_OUT_SEED = 777  # the synthetic world's held-out scenes (never used for training)


def _require_small_model() -> None:
    missing = [str(p) for p in (SMALL_SAM, SMALL_CLIP) if not p.is_file()]
    if missing:
        unavailable(f"shipped small model not built yet: {', '.join(missing)}")


def _held_out_scenes(count: int) -> list[tuple[np.ndarray, np.ndarray, list[dict]]]:
    from possam_label.synthetic import render_scene, scene_rng

    return [render_scene(scene_rng(HELD_OUT_SEED, i), size=256) for i in range(count)]


def test_small_clip_mask_pooled_names_ground_truth_segments() -> None:
    """Stage 2 alone on ground-truth masks of held-out scenes (independent of SAM's quality)."""
    _require_small_model()
    predictor = SamClipPredictor.from_config(SMALL, device="cpu")
    assert predictor.config.baseline.classify == "mask_pooled"
    vocab = load_vocabulary(str(WORLD_VOCAB))
    correct: dict[bool, list[bool]] = {True: [], False: []}
    for image, id_map, segments in _held_out_scenes(5):
        probs = predictor.classify_masks(image, [id_map == s["id"] for s in segments], vocab)
        for seg, p in zip(segments, probs):
            k = vocab.index_of_category_id(seg["category_id"])
            correct[vocab.isthing[k]].append(int(p.argmax()) == k)
    stuff, things = correct[False], correct[True]
    summary = f"stuff {sum(stuff)}/{len(stuff)}, things {sum(things)}/{len(things)}"
    # Measured on 20 held-out scenes with the shipped CLIP: stuff 0.98, things 0.03 (chance 1/12), all 0.33.
    assert len(stuff) >= 6 and sum(stuff) >= 0.8 * len(stuff), summary
    assert sum(stuff) + sum(things) >= 0.25 * (len(stuff) + len(things)), summary


def test_small_model_end_to_end_on_a_held_out_scene() -> None:
    """The shipped config loads (full small SAM through build_sam, small CLIP) and labels a scene.

    Object recall is not asserted: the shipped small SAM's point prompts do not segment the
    world's objects yet (its own held-out point mIoU is 0.0004 on things, 0.43 on stuff), so SAM's
    automatic mask generator keeps no mask at the default thresholds; with the filters off, the
    masks it makes still have to come out as a valid panoptic labelling.
    """
    _require_small_model()
    overrides = {"baseline": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}}
    predictor = SamClipPredictor.from_config(SMALL, device="cpu", overrides=overrides)
    assert predictor.weights_identity()["sam"] is not None and predictor.weights_identity()["clip"] is not None
    ((image, _, _),) = _held_out_scenes(1)
    (pred,) = predictor.predict([image])
    _check_prediction(pred, image, str(WORLD_VOCAB))
    assert pred.segments
