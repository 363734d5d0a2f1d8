"""The small CLIP's image tower (a BatchNorm CNN registered with timm) and its cut-out training crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from possam_label.model.bn_convnet import TIMM_NAME, BatchNormConvNet, register_with_timm
from possam_label.synthetic import WorldIndex, render_scene
from possam_label.synthetic.captions import CaptionGenerator
from possam_label.synthetic.clip_data import ClipSampling, make_clip_batch
from possam_label.synthetic.small_clip import SMALL_CLIP_CONFIG, build_small_clip


def test_registered_with_timm_and_built_by_open_clip():
    import timm

    register_with_timm()
    register_with_timm()  # idempotent
    assert timm.list_models(TIMM_NAME) == [TIMM_NAME]
    trunk = timm.create_model(TIMM_NAME, pretrained=False, num_classes=5)
    assert isinstance(trunk, BatchNormConvNet)
    x = torch.randn(2, 3, 96, 64)
    features = trunk.forward_features(x)
    assert features.shape == (2, 256, 3, 2)  # stride 32
    assert trunk(x).shape == (2, 5)
    assert trunk.forward_head(features, pre_logits=True).shape == (2, 256)
    trunk.reset_classifier(0)
    assert trunk(x).shape == (2, 256)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(TIMM_NAME, pretrained=True)
    with pytest.raises(ValueError, match="drop path"):
        timm.create_model(TIMM_NAME, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="only average-pools"):
        trunk.reset_classifier(0, global_pool="max")

    # open_clip builds the shipped config's image tower from the timm registry.
    clip = build_small_clip()
    assert SMALL_CLIP_CONFIG["vision_cfg"]["timm_model_name"] == TIMM_NAME
    assert isinstance(clip.visual.trunk, BatchNormConvNet)
    with torch.no_grad():
        assert clip.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, SMALL_CLIP_CONFIG["embed_dim"])
        # The image embedding of a crop is its pooled dense map through the head (PosSAM's path).
        pixels = torch.randn(1, 3, 64, 64)
        pooled = clip.visual.trunk.forward_features(pixels).mean(dim=(-2, -1))
        torch.testing.assert_close(clip.visual.head(clip.visual.trunk.forward_head(pooled[:, :, None, None])), clip.encode_image(pixels))


def _ring(crop: torch.Tensor) -> np.ndarray:
    """(3, s, s) uint8 -> (4s - 4, 3) the pixels of the crop's outermost ring."""
    c = crop.permute(1, 2, 0).numpy()
    return np.concatenate([c[0], c[-1], c[1:-1, 0], c[1:-1, -1]])


def test_thing_crops_come_with_context_and_cut_out():
    """Each thing gives a crop with its context and the same window cut out onto one flat colour
    (``ClipSampling.cut_out_things``); without the flag, only the context crops."""
    world = WorldIndex()
    captions = CaptionGenerator(world.synonyms)
    scenes = [render_scene(np.random.default_rng(s), size=256) for s in (3, 4)]
    things = sum(world.isthing[world.index_of_category[seg["category_id"]]] for _, _, segs in scenes for seg in segs)
    assert things >= 4
    sampling = ClipSampling(scenes_per_step=2, max_thing_crops=1000)
    with_cut = make_clip_batch(np.random.default_rng(0), scenes, world, captions, sampling)
    without = make_clip_batch(np.random.default_rng(0), scenes, world, captions, ClipSampling(scenes_per_step=2, max_thing_crops=1000, cut_out_things=False))
    assert int(with_cut.image_isthing.sum()) == 2 * things
    assert int(without.image_isthing.sum()) == things
    assert with_cut.images.shape[1:] == (3, 64, 64)
    thing_crops = with_cut.images[with_cut.image_isthing]
    labels = with_cut.image_labels[with_cut.image_isthing]
    assert torch.equal(labels[0::2], labels[1::2])  # context crop, then its cut-out
    for context, cut_out in zip(thing_crops[0::2], thing_crops[1::2]):
        ring = _ring(cut_out)
        colours, counts = np.unique(ring, axis=0, return_counts=True)
        # Most of the border is the flat fill (the thing may touch the window's edge).
        assert counts.max() >= 0.5 * len(ring), counts.max() / len(ring)
        assert not torch.equal(context, cut_out)
