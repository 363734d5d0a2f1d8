"""PosSAM model core on the tiny config: stage shapes, LDP inputs, MASE, post-processing, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from possam_label.config import MASEConfig, load_config
from possam_label.config_mapping import ConfigError, parse_assignments
from possam_label.model.mase import ensemble
from possam_label.model.possam import PosSAM, clip_pooling_weights, load_heads, save_heads
from possam_label.model.postprocess import panoptic_inference
from possam_label.model.weights import WeightsError
from possam_label.predictor import PosSAMPredictor
from possam_label.train.crop_pretrain import final_stage_with_crop_inputs
from possam_label.vocab import load_vocabulary

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "possam_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(TINY)


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return PosSAM.from_config(tiny_cfg).eval()


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary("cat,dog,grass [stuff],sky [stuff]")


def test_every_stage_has_the_documented_shape(tiny_cfg, tiny_model, vocab):
    model = tiny_model
    pixels = torch.rand(2, 3, 128, 128) * 255
    sam_features, clip_features = model.encode(pixels)
    assert sam_features.shape == (2, 32, 8, 8)  # stride 16, neck channels
    assert clip_features.shape == (2, model.clip.dense_channels, 4, 4)  # stride 32
    levels = model.pyramid(sam_features)
    assert {k: tuple(v.shape) for k, v in levels.items()} == {
        "res2": (2, 32, 32, 32),
        "res3": (2, 32, 16, 16),
        "res4": (2, 32, 8, 8),
        "res5": (2, 32, 4, 4),
    }
    mask_features, multi_scale = model.pixel_decoder(levels)
    assert mask_features.shape == (2, 32, 32, 32)
    assert [tuple(m.shape) for m in multi_scale] == [(2, 32, 4, 4), (2, 32, 8, 8), (2, 32, 16, 16)]
    stages = model.transformer_decoder(multi_scale, mask_features)
    assert len(stages) == tiny_cfg.decoder.num_layers + 1
    for queries, masks in stages:
        assert queries.shape == (2, 16, 32) and masks.shape == (2, 16, 32, 32)
    text = model.clip.text_classifier(vocab)
    out = model(pixels, text)
    assert out["pred_logits"].shape == (2, 16, len(vocab) + 1)
    assert out["pred_masks"].shape == (2, 16, 32, 32)
    assert out["pred_iou"].shape == (2, 16)
    assert ((out["pred_iou"] >= 0) & (out["pred_iou"] <= 1)).all()
    assert len(out["aux_outputs"]) == tiny_cfg.decoder.num_layers
    oov = model.out_vocab_logits(out["pred_masks"], clip_features, text)
    assert oov.shape == (2, 16, len(vocab))


def test_frozen_backbones_get_no_gradient_and_heads_do(tiny_model, vocab):
    model = tiny_model.train()
    out = model(torch.rand(1, 3, 128, 128) * 255, model.clip.text_classifier(vocab))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum() + out["pred_iou"].sum()
    loss.backward()
    assert all(p.grad is None for p in model.sam.parameters())
    assert all(p.grad is None for p in model.clip.parameters())
    assert model.ldp.pool_proj.weight.grad is not None
    assert model.mask_quality_head.mlp.layers[0].weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.eval()


@pytest.mark.parametrize("fusion", ["pixel_add", "pixel_gated", "pool_then_fuse"])
def test_ldp_uses_both_sam_mask_features_and_clip_features(fusion, vocab):
    cfg = load_config(TINY, {"ldp": {"fusion": fusion}})
    torch.manual_seed(1)
    model = PosSAM.from_config(cfg).eval()
    # A fresh LDP's CLIP projection starts at zero (heads warm-started onto a new CLIP begin from the
    # previous predictions); give it weights as training would, to see the wiring.
    assert not any(p.any() for p in model.ldp.clip_proj.parameters())
    with torch.no_grad():
        for p in model.ldp.clip_proj.parameters():
            p.normal_(0.0, 0.1)
    text = model.clip.text_classifier(vocab)
    pixels = torch.rand(1, 3, 128, 128) * 255
    sam_features, clip_features = model.encode(pixels)
    with torch.no_grad():
        base = model.forward_heads(sam_features, clip_features, text)["pred_logits"]
        # Changing only the CLIP features changes the class logits ...
        other_clip = model.forward_heads(sam_features, clip_features + torch.randn_like(clip_features), text)["pred_logits"]
        # ... and so does changing only the SAM mask features (with the masks held fixed).
        levels = model.pyramid(sam_features)
        mask_features, multi_scale = model.pixel_decoder(levels)
        stages = model.transformer_decoder(multi_scale, mask_features)
        queries, mask_logits = stages[-1]
        fused = model.ldp.fuse(mask_features, clip_features)
        emb = model.ldp(fused, mask_features, mask_logits, queries)
        noisy_masked = mask_features + torch.randn_like(mask_features)
        emb_sam = model.ldp(model.ldp.fuse(noisy_masked, clip_features), noisy_masked, mask_logits, queries)
        emb_clip = model.ldp(model.ldp.fuse(mask_features, clip_features * 2 + 1), mask_features, mask_logits, queries)
    assert not torch.allclose(base, other_clip)
    assert torch.allclose(model.ldp.classify(emb, text), base, atol=1e-5)
    assert not torch.allclose(emb, emb_sam)
    assert not torch.allclose(emb, emb_clip)


def _crafted_logits():
    """Two queries over classes [seen_a, seen_b, unseen_c, unseen_d] (+ void).

    q0 is on a seen-class object: LDP confident on seen_a, good mask.
    q1 is on an unseen-class object: LDP unsure (leans to seen_b), frozen CLIP confident on unseen_c.
    """
    in_logits = torch.tensor([[6.0, 0.0, 0.0, 0.0, -2.0], [1.0, 1.4, 1.0, 0.5, -2.0]])
    out_logits = torch.tensor([[2.0, 1.0, 0.5, 0.0], [0.0, 0.5, 6.0, 0.0]])
    iou = torch.tensor([0.95, 0.6])
    seen = torch.tensor([True, True, False, False])
    return in_logits, out_logits, iou, seen


def test_mase_follows_ldp_on_confident_seen_masks_and_clip_on_unseen():
    in_logits, out_logits, iou, seen = _crafted_logits()
    r = ensemble(in_logits, out_logits, iou, seen, MASEConfig(mode="mase"))
    # Image-adaptive thresholds: q0 is above the mean IoU and mean confidence, q1 below.
    assert r.seen_like.tolist() == [True, False]
    assert r.labels.tolist() == [0, 2]
    # q0 used alpha (0.4 weight on CLIP), q1 used beta (0.8 weight on CLIP): check the maths.
    p_in = torch.softmax(in_logits[:, :4], -1)
    p_out = torch.softmax(out_logits, -1)
    p_void = torch.softmax(in_logits, -1)[:, -1]
    for q, w in ((0, 0.4), (1, 0.8)):
        z = (1 - w) * torch.log(p_in[q] + 1e-8) + w * torch.log(p_out[q] + 1e-8)
        expected = torch.softmax(z, -1) * (1 - p_void[q])
        assert torch.allclose(r.probs[q, :4], expected, atol=1e-6)
    # Scores are rescored by predicted mask quality (gamma = 1).
    assert torch.allclose(r.scores, r.probs.max(-1).values * iou)
    # In-vocabulary only gets the unseen object wrong; the out-of-vocab-only baseline gets q1 right.
    assert ensemble(in_logits, out_logits, iou, seen, MASEConfig(mode="in_vocab")).labels.tolist() == [0, 1]
    assert ensemble(in_logits, out_logits, iou, seen, MASEConfig(mode="out_vocab")).labels.tolist() == [0, 2]


def test_fc_clip_static_ensemble_uses_name_overlap():
    in_logits, out_logits, iou, seen = _crafted_logits()
    r = ensemble(in_logits, out_logits, iou, seen, MASEConfig(mode="fc_clip", gamma=0.0))
    p_in = torch.softmax(in_logits[:, :4], -1)
    p_out = torch.softmax(out_logits, -1)
    w = torch.tensor([0.4, 0.4, 0.8, 0.8])
    z = (1 - w) * torch.log(p_in + 1e-8) + w * torch.log(p_out + 1e-8)
    p_void = torch.softmax(in_logits, -1)[:, -1:]
    assert torch.allclose(r.probs[:, :4], torch.softmax(z, -1) * (1 - p_void), atol=1e-6)
    assert torch.allclose(r.scores, r.probs.max(-1).values)  # gamma 0: no mask-quality rescoring
    assert not r.seen_like.any()


@pytest.mark.parametrize("granularity", ["query", "query_class", "image_class"])
def test_mase_variants_and_drop_threshold(granularity):
    in_logits, out_logits, iou, seen = _crafted_logits()
    r = ensemble(in_logits, out_logits, iou, seen, MASEConfig(granularity=granularity, drop_iou_threshold=0.7))
    assert r.labels[0] == 0
    assert r.keep.tolist() == [True, False]  # q1's predicted IoU 0.6 < 0.7
    fixed = ensemble(in_logits, out_logits, iou, seen, MASEConfig(threshold_rule="fixed", iou_threshold=0.5, conf_threshold=0.2))
    assert fixed.seen_like.tolist() == [True, True]


def test_novel_void_suppression_and_void_threshold():
    """LDP calls the novel object void; the frozen CLIP's belief in a novel class lowers that void."""
    in_logits, out_logits, iou, seen = _crafted_logits()
    in_logits = in_logits.clone()
    in_logits[1, -1] = 4.0  # q1 (unseen object): void is LDP's argmax
    p_void = torch.softmax(in_logits, -1)[:, -1]
    p_novel = torch.softmax(out_logits, -1)[:, 2:].sum(-1)
    spec = ensemble(in_logits, out_logits, iou, seen, MASEConfig())
    assert spec.labels.tolist() == [0, 4] and spec.keep.tolist() == [True, False]
    assert torch.allclose(spec.probs[:, -1], p_void)
    r = ensemble(in_logits, out_logits, iou, seen, MASEConfig(novel_void_suppression=0.8))
    assert torch.allclose(r.probs[:, -1], p_void * (1 - 0.8 * p_novel), atol=1e-6)
    assert r.labels.tolist() == [0, 2] and r.keep.tolist() == [True, True]
    assert torch.allclose(r.probs.sum(-1), torch.ones(2), atol=1e-6)
    # in_vocab has no frozen CLIP, so nothing lowers its void.
    r_in = ensemble(in_logits, out_logits, iou, seen, MASEConfig(mode="in_vocab", novel_void_suppression=0.8))
    assert torch.allclose(r_in.probs[:, -1], p_void)

    # void_threshold: q1 (p_void ~0.8) is void only at thresholds at or below its p_void.
    assert 0.7 < float(p_void[1]) < 0.9
    kept = ensemble(in_logits, out_logits, iou, seen, MASEConfig(void_threshold=0.9))
    assert kept.labels.tolist() == [0, 2]  # its best class, scored without the void share
    assert torch.allclose(kept.scores[1], kept.probs[1, 2] * iou[1])
    assert ensemble(in_logits, out_logits, iou, seen, MASEConfig(void_threshold=0.7)).labels.tolist() == [0, 4]
    for bad in (MASEConfig(novel_void_suppression=1.5), MASEConfig(void_threshold=0.0)):
        with pytest.raises(ValueError, match="mase."):
            ensemble(in_logits, out_logits, iou, seen, bad)


def test_panoptic_postprocess_merges_stuff_keeps_things_and_leaves_void():
    h = w = 20
    logits = torch.full((6, h, w), -10.0)
    logits[0, :10, :] = 10  # stuff "grass" top half
    logits[1, 10:, :10] = 10  # stuff "grass" bottom-left -> merged with q0
    logits[2, 12:16, 12:16] = 10  # thing "cat"
    logits[3, 12:16, 16:19] = 10  # another "cat" instance, adjacent: kept apart
    logits[4, 0:4, 0:4] = 10  # thing "dog" fully covered by grass with higher score -> dropped by overlap
    logits[5, 18:, 18:] = 10  # low-score query -> below threshold
    scores = torch.tensor([0.9, 0.8, 0.95, 0.9, 0.1, 0.05])
    labels = torch.tensor([2, 2, 0, 0, 1, 1])
    isthing = torch.tensor([True, True, False, False])
    pan, segs = panoptic_inference(logits, scores, labels, isthing, object_mask_threshold=0.08, overlap_threshold=0.8)
    ids = [s.id for s in segs]
    assert ids == list(range(1, len(ids) + 1))  # unique, consecutive
    assert set(np.unique(pan.numpy())) == {0, *ids}
    grass = [s for s in segs if s.label == 2]
    cats = [s for s in segs if s.label == 0]
    assert len(grass) == 1 and len(cats) == 2
    assert (pan[:10, :] == grass[0].id).all() and (pan[10:, :10] == grass[0].id).all()
    assert (pan[12:16, 12:16] == cats[0].id).all() and (pan[12:16, 16:19] == cats[1].id).all()
    assert not any(s.label == 1 for s in segs)
    assert (pan[10:12, 12:] == 0).all()  # nothing confident there: void
    assert (pan[18:, 19:] == 0).all()


def test_predictor_batches_images_of_different_sizes(vocab):
    torch.manual_seed(0)
    pred = PosSAMPredictor.from_config(TINY, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((100, 150), (64, 64), (201, 33))]
    results = pred.predict(images, vocab, batch_size=2)
    assert [r.panoptic_map.shape for r in results] == [(100, 150), (64, 64), (201, 33)]
    for r in results:
        ids = sorted(int(i) for i in np.unique(r.panoptic_map) if i != 0)
        assert ids == [s.id for s in r.segments]
        for s in r.segments:
            assert s.area == int((r.panoptic_map == s.id).sum())
            assert s.category in vocab.names
            assert 0 <= s.score <= 1 and 0 <= s.mask_quality <= 1


def test_head_checkpoint_roundtrip_and_mismatch(tmp_path, tiny_cfg, vocab):
    torch.manual_seed(3)
    pred = PosSAMPredictor.from_config(TINY, device="cpu")
    # Make heads non-trivial so the round trip is meaningful.
    with torch.no_grad():
        for p in pred.model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "heads.safetensors"
    save_heads(pred.model, path, tiny_cfg, vocab)
    image = np.random.default_rng(1).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    before = pred.predict([image], vocab)[0]
    torch.manual_seed(99)  # different random heads before loading
    reloaded = PosSAMPredictor.from_config(TINY, checkpoint=str(path), device="cpu")
    # The backbones are random in the tiny config: copy them so only the heads come from the file.
    reloaded.model.sam.load_state_dict(pred.model.sam.state_dict())
    reloaded.model.clip.load_state_dict(pred.model.clip.state_dict())
    after = reloaded.predict([image], vocab)[0]
    assert np.array_equal(before.panoptic_map, after.panoptic_map)
    assert [s.to_dict() for s in before.segments] == [s.to_dict() for s in after.segments]
    assert reloaded.train_vocabulary.names == vocab.names

    other = load_config(TINY, {"decoder": {"num_queries": 8}})
    with pytest.raises(WeightsError, match=r"does not match the model config: decoder\.num_queries"):
        load_heads(PosSAM.from_config(other), path, other)


def test_mask_shape_encoder_sees_outlines_not_positions():
    from possam_label.model.mask_shape import MaskShapeEncoder

    torch.manual_seed(0)
    encoder = MaskShapeEncoder(hidden_dim=32, crop_size=16)
    logits = torch.full((1, 4, 64, 64), -10.0)
    logits[0, 0, 5:15, 5:25] = 10.0  # a 10x20 rectangle ...
    logits[0, 1, 40:50, 30:50] = 10.0  # ... the same rectangle elsewhere
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    logits[0, 2][((yy - 30) / 5) ** 2 + ((xx - 30) / 10) ** 2 <= 1] = 10.0  # an ellipse with the same box
    # query 3: empty mask (its box is the whole map)
    boxes = MaskShapeEncoder.boxes(logits[0] > 0)
    assert boxes[0].tolist() == [5, 5, 25, 15] and boxes[1].tolist() == [30, 40, 50, 50]
    assert boxes[3].tolist() == [0, 0, 64, 64]
    out = encoder(logits)
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()
    assert torch.allclose(out[0, 0], out[0, 1], atol=1e-5)  # translation does not matter
    assert (out[0, 0] - out[0, 2]).abs().max() > 1e-3  # the outline does
    # The masks get no gradient through it; its own weights do.
    logits.requires_grad_(True)
    encoder(logits).sum().backward()
    assert logits.grad is None or not logits.grad.any()
    assert all(p.grad is not None for p in encoder.parameters())


def test_crop_encoder_reads_the_image_inside_each_mask_box():
    from possam_label.model.mask_shape import MaskShapeEncoder

    torch.manual_seed(0)
    encoder = MaskShapeEncoder(hidden_dim=32, crop_size=16, use_pixels=True)
    assert [m.in_channels for m in encoder.convs if isinstance(m, torch.nn.Conv2d)][0] == 4
    assert not encoder(torch.randn(1, 2, 16, 16), torch.randn(1, 3, 64, 64)).any()  # starts at zero
    torch.nn.init.normal_(encoder.proj.weight)
    logits = torch.full((1, 2, 16, 16), -10.0)  # stride 4 of a 64 px image
    logits[0, 0, 4:8, 4:8] = 10.0  # box 16..32 px, square crop 14.4..33.6 px
    logits[0, 1, 11:15, 11:15] = 10.0  # box 44..60 px
    pixels = torch.randn(1, 3, 64, 64)
    out = encoder(logits, pixels)
    assert out.shape == (1, 2, 32) and torch.isfinite(out).all()
    inside = pixels.clone()
    inside[:, :, 20:28, 20:28] += 2.0  # inside query 0's box only
    changed = encoder(logits, inside)
    assert (changed[0, 0] - out[0, 0]).abs().max() > 1e-4
    assert torch.allclose(changed[0, 1], out[0, 1])
    outside = pixels.clone()
    outside[:, :, 50:58, 50:58] += 2.0  # inside query 1's box only
    changed = encoder(logits, outside)
    assert torch.allclose(changed[0, 0], out[0, 0]) and (changed[0, 1] - out[0, 1]).abs().max() > 1e-4
    # No gradient into the masks or the image; the encoder's own weights learn.
    logits.requires_grad_(True)
    pixels.requires_grad_(True)
    encoder(logits, pixels).sum().backward()
    assert logits.grad is None and pixels.grad is None
    assert all(p.grad is not None for p in encoder.parameters())
    with pytest.raises(ValueError, match="crop_encoder"):
        encoder(logits)


def test_heads_with_a_crop_encoder_need_the_pixels_and_warm_start_unchanged(tmp_path, tiny_cfg, vocab):
    cfg = load_config(TINY, {"ldp": {"shape_encoder": True, "crop_encoder": True}})
    torch.manual_seed(0)
    model = PosSAM.from_config(cfg).eval()
    torch.nn.init.normal_(model.ldp.crop_encoder.proj.weight, std=0.1)  # as if trained (it starts at zero)
    assert model.needs_pixels and model.detail_stem is None
    pixels = torch.rand(1, 3, 128, 128) * 255
    text = model.clip.text_classifier(vocab)
    with torch.no_grad():
        sam_features, clip_features = model.encode(pixels)
        with pytest.raises(ValueError, match="needs them"):
            model.forward_heads(sam_features, clip_features, text, all_stages=False)
        out = model.forward_heads(sam_features, clip_features, text, all_stages=False, pixels=pixels)
        brighter = model.forward_heads(sam_features, clip_features, text, all_stages=False, pixels=(pixels + 40).clamp(max=255))
    assert out["pred_logits"].shape == (1, cfg.decoder.num_queries, len(vocab) + 1)
    # Masks do not depend on the pixels (no detail stem); the class embeddings do.
    assert torch.equal(out["pred_masks"], brighter["pred_masks"])
    assert not torch.allclose(out["pred_embeddings"], brighter["pred_embeddings"])
    # The final stage's crop-encoder inputs come back computed once, the same as the encoder's own,
    # and the classes are unchanged; without the crop embedding they are those of a zero projection.
    with torch.no_grad():
        with_inputs = final_stage_with_crop_inputs(model, sam_features, clip_features, text, pixels)
        crops, geometry = model.ldp.crop_encoder.crop_inputs(out["pred_masks"], model.sam.normalize(pixels))
        without = final_stage_with_crop_inputs(model, sam_features, clip_features, text, pixels, embed_crops=False)
        torch.nn.init.zeros_(model.ldp.crop_encoder.proj.weight)
        zero = model.forward_heads(sam_features, clip_features, text, all_stages=False, pixels=pixels)
    assert torch.equal(with_inputs["crop_inputs"][0], crops) and torch.equal(with_inputs["crop_inputs"][1], geometry)
    assert crops.shape == (cfg.decoder.num_queries, 4, cfg.ldp.crop_encoder_size, cfg.ldp.crop_encoder_size)
    assert torch.allclose(with_inputs["pred_logits"], out["pred_logits"], atol=1e-5)
    assert not torch.allclose(without["pred_logits"], out["pred_logits"])
    assert torch.allclose(without["pred_logits"], zero["pred_logits"], atol=1e-5)
    assert "crop_inputs" not in out
    with pytest.raises(ValueError, match="crop encoder"):
        final_stage_with_crop_inputs(PosSAM.from_config(tiny_cfg).eval(), sam_features, clip_features, text, pixels)
    # Switched on in a warm start from heads without it, the model is the old one.
    from possam_label.train.trainer import init_heads_from

    torch.manual_seed(1)
    plain = PosSAM.from_config(tiny_cfg).eval()
    path = tmp_path / "plain.safetensors"
    save_heads(plain, path, tiny_cfg, vocab)
    torch.manual_seed(1)  # the same random backbones
    cropped = PosSAM.from_config(load_config(TINY, {"ldp": {"crop_encoder": True}})).eval()
    new = init_heads_from(cropped, path)
    assert new and all(k.startswith("ldp.crop_encoder.") for k in new)
    with torch.no_grad():
        before = plain(pixels, text)
        after = cropped(pixels, text)
    assert torch.equal(before["pred_masks"], after["pred_masks"]) and torch.equal(before["pred_logits"], after["pred_logits"])


def test_shape_encoder_switch_and_warm_start(tmp_path, tiny_cfg, vocab):
    from possam_label.train.trainer import init_heads_from

    torch.manual_seed(4)
    plain = PosSAM.from_config(tiny_cfg)
    path = tmp_path / "plain.safetensors"
    save_heads(plain, path, tiny_cfg, vocab)
    assert plain.ldp.shape_encoder is None
    shaped_cfg = load_config(TINY, {"ldp": {"shape_encoder": True}})
    shaped = PosSAM.from_config(shaped_cfg)
    assert shaped_cfg.model_identity()["ldp"]["shape_encoder"] is True
    with pytest.raises(WeightsError, match="ldp.shape_encoder: checkpoint False vs config True"):
        load_heads(shaped, path, shaped_cfg)
    # train.init_heads loads what matches and reports what keeps its initialisation.
    fresh = {k: v.clone() for k, v in shaped.heads_state_dict().items()}
    new = init_heads_from(shaped, path)
    assert new and all(k.startswith("ldp.shape_encoder.") for k in new)
    state = shaped.heads_state_dict()
    for key, value in plain.heads_state_dict().items():
        assert torch.equal(state[key], value), key
    assert all(torch.equal(state[k], fresh[k]) for k in new)
    text = shaped.clip.text_classifier(vocab)
    with torch.no_grad():
        out = shaped.forward_heads(*shaped.encode(torch.rand(1, 3, 128, 128) * 255), text)
    assert out["pred_logits"].shape[-1] == len(vocab) + 1


def test_checkpoints_older_than_a_setting_match_its_default(tmp_path, tiny_cfg, vocab):
    """A checkpoint whose recorded identity lacks a key (saved before the setting existed) loads
    when the config holds the key's default, and is refused otherwise."""
    import json

    from safetensors.torch import load_file, save_file

    from possam_label.model.possam import read_heads_metadata

    torch.manual_seed(6)
    model = PosSAM.from_config(tiny_cfg)
    path = tmp_path / "heads.safetensors"
    save_heads(model, path, tiny_cfg, vocab)
    metadata = read_heads_metadata(path)
    identity = json.loads(metadata["model_identity"])
    del identity["ldp"]["shape_encoder"], identity["ldp"]["shape_crop_size"], identity["ldp"]["crop_encoder"], identity["ldp"]["crop_encoder_size"], identity["pixel_decoder"]["detail_stem"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata=dict(metadata, model_identity=json.dumps(identity)))
    load_heads(PosSAM.from_config(tiny_cfg), old, tiny_cfg)
    stem_cfg = load_config(TINY, {"pixel_decoder": {"detail_stem": True}})
    with pytest.raises(WeightsError, match=r"pixel_decoder\.detail_stem: checkpoint \(absent\) vs config True"):
        load_heads(PosSAM.from_config(stem_cfg), old, stem_cfg)
    # A key only the checkpoint has is never excused.
    identity["decoder"]["future_setting"] = 1
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(path)), str(newer), metadata=dict(metadata, model_identity=json.dumps(identity)))
    with pytest.raises(WeightsError, match=r"decoder\.future_setting: checkpoint 1 vs config \(absent\)"):
        load_heads(PosSAM.from_config(tiny_cfg), newer, tiny_cfg)


def test_detail_stem_starts_as_the_identity_and_learns(tmp_path, tiny_cfg, vocab):
    from possam_label.train.trainer import init_heads_from

    torch.manual_seed(7)
    plain = PosSAM.from_config(tiny_cfg).eval()
    path = tmp_path / "plain.safetensors"
    save_heads(plain, path, tiny_cfg, vocab)
    stem_cfg = load_config(TINY, {"pixel_decoder": {"detail_stem": True}})
    torch.manual_seed(7)  # the same random backbones
    stem = PosSAM.from_config(stem_cfg).eval()
    new = init_heads_from(stem, path)
    assert new and all(k.startswith("detail_stem.") for k in new)
    text = plain.clip.text_classifier(vocab)
    pixels = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        before, after = plain(pixels, text), stem(pixels, text)
    # Its output layer starts at zero: switched on, the warm-started model is the old one.
    assert torch.equal(before["pred_masks"], after["pred_masks"]) and torch.equal(before["pred_logits"], after["pred_logits"])
    with pytest.raises(ValueError, match="reads the input pixels"):
        stem.forward_heads(*stem.encode(pixels), text)
    # Gradients reach it through the masks, and a step makes the masks depend on the pixels.
    stem.train()
    out = stem(pixels, text)
    out["pred_masks"].square().mean().backward()
    assert stem.detail_stem.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        stem.detail_stem.proj.weight -= 0.1 * stem.detail_stem.proj.weight.grad.sign()
        moved = stem(pixels, text)["pred_masks"]
    assert not torch.allclose(moved, before["pred_masks"])
    # Saved and loaded like any head tensor.
    saved = tmp_path / "stem.safetensors"
    save_heads(stem, saved, stem_cfg, vocab)
    torch.manual_seed(7)
    again = PosSAM.from_config(stem_cfg)
    load_heads(again, saved, stem_cfg)
    assert torch.equal(again.detail_stem.proj.weight, stem.detail_stem.proj.weight)


def test_command_line_assignments_are_data():
    overrides = parse_assignments(["train.lr=1e-3", "train.lr_steps=[800, 950]", "mase.mode=fc_clip", "decoder.num_queries=12"])
    assert overrides == {"train": {"lr": 1e-3, "lr_steps": [800, 950]}, "mase": {"mode": "fc_clip"}, "decoder": {"num_queries": 12}}
    cfg = load_config(TINY, overrides)
    assert (cfg.train.lr, cfg.train.lr_steps, cfg.mase.mode, cfg.decoder.num_queries) == (1e-3, [800, 950], "fc_clip", 12)
    # A value that looks like code stays a string, and the config's type check refuses it.
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        load_config(TINY, parse_assignments(["train.lr=__import__('os').getcwd()"]))
    for bad in ("train.lr", "=3", "train..lr=1", "train=1"):
        if bad == "train=1":
            with pytest.raises(ConfigError):
                load_config(TINY, parse_assignments([bad]))
            continue
        with pytest.raises(ConfigError, match="bad override"):
            parse_assignments([bad])


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("decoder:\n  num_queeries: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*decoder\.num_queeries"):
        load_config(bad)
    bad.write_text("decoder:\n  num_queries: many\n")
    with pytest.raises(ConfigError, match=r"decoder\.num_queries: expected an integer"):
        load_config(bad)
    bad.write_text("sam:\n  variant: vit_b\n  depth: 3\n")
    with pytest.raises(ConfigError, match="contradicts"):
        load_config(bad)
    # A renamed key: the file, the old key and the new one are named (also for a --set override).
    bad.write_text("baseline:\n  min_score: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key baseline\.min_score was renamed baseline\.object_mask_threshold"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"possam_tiny\.yaml: config key baseline\.min_score was renamed baseline\.object_mask_threshold"):
        load_config(TINY, parse_assignments(["baseline.min_score=0.2"]))
    assert load_config(TINY, parse_assignments(["baseline.object_mask_threshold=0.2"])).baseline.object_mask_threshold == 0.2
    for name in ("possam_vit_b.yaml", "possam_vit_h.yaml", "possam_tiny.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert cfg.sam.resolved().embed_dim > 0
    h = load_config(ROOT / "configs" / "possam_vit_h.yaml")
    assert (h.decoder.num_queries, h.decoder.num_layers, h.sam.resolved().embed_dim) == (250, 9, 1280)
    assert h.clip.model_name == "convnext_large_d_320" and h.clip.pretrained == "laion2b_s29b_b131k_ft_soup"


def test_an_image_where_every_query_is_dropped_gets_an_empty_map(vocab):
    pred = PosSAMPredictor.from_config(TINY, device="cpu", overrides={"mase": {"drop_iou_threshold": 1.01}})
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    image.setflags(write=False)  # as Ray hands them over
    result = pred.predict([image], vocab)[0]
    assert result.panoptic_map.shape == (40, 50) and not result.panoptic_map.any() and result.segments == []


def test_clip_pooling_weights_binarise_on_the_clip_grid_with_a_soft_fallback():
    logits = torch.full((1, 2, 8, 8), -6.0)
    logits[0, 0, :4, :4] = 6.0  # covers the top-left cell of a 2 x 2 grid
    logits[0, 1, 0, 0] = 6.0  # too small to bring any cell above 0
    weights = clip_pooling_weights(logits, (2, 2))
    assert weights[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    fallback = weights[0, 1]
    assert (fallback > 0).all() and (fallback < 0.5).all() and fallback[0, 0] == fallback.max()
    small = torch.nn.functional.interpolate(logits[:, 1:], size=(2, 2), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fallback, small[0, 0].sigmoid())


def test_masked_crops_keep_the_mask_and_blank_the_rest():
    from possam_label.model.masked_crop import mask_boxes, masked_crops, square_boxes

    pixels = torch.zeros(1, 3, 64, 64)
    pixels[0, 0] = torch.arange(64.0)[None, :].expand(64, 64)  # red = x, so a crop shows where it was cut
    pixels[0, 1] = 200.0
    logits = torch.full((1, 2, 16, 16), -10.0)  # stride 4
    logits[0, 0, 4:8, 6:8] = 10.0  # box x 24..32, y 16..32 px: 8 x 16, square side 16 * 1.5 = 24
    logits[0, 1] = -10.0  # empty mask: its box is the whole image
    assert mask_boxes(logits[0] > 0).tolist() == [[6.0, 4.0, 8.0, 8.0], [0.0, 0.0, 16.0, 16.0]]
    assert square_boxes(torch.tensor([[6.0, 4.0, 8.0, 8.0]]), 4.0, 1.5).tolist() == [[16.0, 12.0, 40.0, 36.0]]
    fill = (10.0, 20.0, 30.0)
    crops = masked_crops(pixels, logits, crop_size=24, margin=1.5, fill=fill)
    assert crops.shape == (2, 3, 24, 24)
    # The square box 16..40 px sampled at one crop pixel per input pixel: inside the mask
    # (x 24..32, y 16..32) the image, away from it the fill colour (its outline is resampled
    # bilinearly from the stride-4 logits, so the ring of pixels on the boundary is left out).
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[5:19, 9:15] = True
    outside = torch.ones(24, 24, dtype=torch.bool)
    outside[3:21, 7:17] = False
    crop = crops[0]
    assert torch.allclose(crop[0][inside], (torch.arange(24.0) + 16.0)[None, :].expand(24, 24)[inside], atol=0.51)
    assert (crop[1][inside] == 200.0).all()
    for c, value in enumerate(fill):
        assert (crop[c][outside] == value).all()
    # An empty mask blanks its whole crop.
    assert all((crops[1, c] == value).all() for c, value in enumerate(fill))


@pytest.mark.parametrize("source", ["mask_pool", "masked_crop", "mean"])
def test_out_of_vocabulary_sources(tiny_cfg, vocab, source):
    """clip.out_vocab_source: mask pooling (spec), the masked crop as an image, or the mean of both."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    pool_model = PosSAM.from_config(tiny_cfg).eval()
    cfg = load_config(TINY, {"clip": {"out_vocab_source": source}})
    torch.manual_seed(0)
    model = PosSAM.from_config(cfg).eval()
    pixels = torch.rand(1, 3, 128, 128) * 255
    text = model.clip.text_classifier(vocab)
    with torch.no_grad():
        out = model(pixels, text)
        clip_features = model.encode(pixels)[1]
        logits = model.out_vocab_logits(out["pred_masks"], clip_features, text, pixels=pixels)
        pooled = pool_model.out_vocab_logits(out["pred_masks"], clip_features, text)
        crops = masked_crops_of(model, pixels, out["pred_masks"])
        crop_emb = F.normalize(model.clip.embed_images(crops), dim=-1)
    b, q = out["pred_masks"].shape[:2]
    assert model.clip.mask_crop_size == 128  # the tiny CLIP's own input size
    crop_logits = text.class_logits(crop_emb.view(b, q, -1), model.clip.logit_scale)
    if source == "mask_pool":
        torch.testing.assert_close(logits, pooled)
    elif source == "masked_crop":
        torch.testing.assert_close(logits, crop_logits)
        with pytest.raises(ValueError, match="pixels"):
            model.out_vocab_logits(out["pred_masks"], clip_features, text)
    else:
        # The mean of the two normalised embeddings, classified as any query embedding.
        from possam_label.model.common import masked_average_pool

        weights = clip_pooling_weights(out["pred_masks"], clip_features.shape[-2:])
        with torch.no_grad():
            pool_emb = model.clip.embed_pooled(masked_average_pool(clip_features, weights).reshape(b * q, -1))
        mean_emb = (F.normalize(pool_emb, dim=-1) + crop_emb) / 2
        torch.testing.assert_close(logits, text.class_logits(mean_emb.view(b, q, -1), model.clip.logit_scale))
        assert not torch.allclose(logits, pooled) and not torch.allclose(logits, crop_logits)
        # mask_crop_classes "things": stuff classes (grass, sky) keep the pooled logits.
        model.clip.mask_crop_classes = "things"
        with torch.no_grad():
            things_only = model.out_vocab_logits(out["pred_masks"], clip_features, text, pixels=pixels)
        torch.testing.assert_close(things_only[..., 2:], pooled[..., 2:])
        torch.testing.assert_close(things_only[..., :2], logits[..., :2])
        model.clip.mask_crop_classes = "all"


def masked_crops_of(model, pixels, mask_logits):
    from possam_label.model.masked_crop import masked_crops

    return masked_crops(pixels, mask_logits, model.clip.mask_crop_size, model.clip.mask_crop_margin, model.clip.pixel_mean.flatten().tolist())


def test_out_of_vocabulary_source_settings_are_checked():
    for bad, match in (
        ({"out_vocab_source": "crop"}, "out_vocab_source"),
        ({"mask_crop_margin": 0.5}, "mask_crop_margin"),
        ({"mask_crop_classes": "stuff"}, "mask_crop_classes"),
    ):
        with pytest.raises(ValueError, match=match):
            PosSAM.from_config(load_config(TINY, {"clip": bad}))
