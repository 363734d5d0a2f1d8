"""Paper-size building blocks on CPU: SAM vit_b from a segment_anything checkpoint + a real open_clip ConvNeXt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from possam_label.config import load_config
from possam_label.model.sam_backbone import SAMBackbone
from possam_label.model.weights import WeightsError
from possam_label.predictor import PosSAMPredictor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sam_vit_b_checkpoint(tmp_path_factory):
    """A checkpoint written by segment_anything itself from a randomly initialised vit_b."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


@pytest.mark.slow
def test_vit_b_and_convnext_end_to_end_on_a_1024_image(sam_vit_b_checkpoint):
    sam, checkpoint = sam_vit_b_checkpoint
    # vit_b from the segment_anything checkpoint + open_clip's real convnext_base architecture
    # (random weights: no download here), paper decoder sizes.
    cfg = load_config(
        ROOT / "configs" / "possam_vit_b.yaml",
        {"sam": {"checkpoint": str(checkpoint)}, "clip": {"model_name": "convnext_base", "pretrained": None}},
    )
    torch.manual_seed(0)
    predictor = PosSAMPredictor.from_config(cfg, device="cpu")
    model = predictor.model
    assert model.clip.dense_channels == 1024  # ConvNeXt-B final stage
    image = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)

    # The encoder's input and output inside the full prediction (one ViT-B pass, not two: the
    # 1024 px encoder dominates this test's time on a CPU).
    seen: dict[str, torch.Tensor] = {}
    hook = model.sam.register_forward_hook(lambda _m, args, out: seen.update(pixels=args[0], features=out))
    try:
        result = predictor.predict([image], "cat,dog,grass [stuff]")[0]
    finally:
        hook.remove()
    # The encoder is segment_anything's vit_b with every weight of the checkpoint in place and its
    # input normalised as segment_anything's own preprocess does (the same forward at a small size,
    # output for output: test_sam_checkpoint_loads_with_identical_encoder_outputs_at_custom_size; a
    # second 1024 px ViT-B pass to compare outputs here would double this test's time).
    assert seen["pixels"].shape == (1, 3, 1024, 1024)
    assert seen["features"].shape == (1, 256, 64, 64)
    theirs = sam.image_encoder.state_dict()
    ours = model.sam.encoder.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    pixels = seen["pixels"].float()
    assert torch.equal(model.sam.normalize(pixels), sam.preprocess(pixels))

    assert result.panoptic_map.shape == (1024, 1024)
    assert model.transformer_decoder.num_queries == 250 and model.transformer_decoder.num_layers == 9
    ids = sorted(int(i) for i in np.unique(result.panoptic_map) if i)
    assert ids == [s.id for s in result.segments]


def test_sam_checkpoint_loads_with_identical_encoder_outputs_at_custom_size(tmp_path):
    """Same check at a small custom size (fast): every encoder weight must land in place."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    encoder = ImageEncoderViT(
        img_size=128, patch_size=16, embed_dim=48, depth=2, num_heads=2, out_chans=32,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
    )
    path = tmp_path / "sam_small.pth"
    torch.save({f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}, path)
    cfg = load_config(ROOT / "configs" / "possam_tiny.yaml", {"sam": {"embed_dim": 48, "window_size": 4}}).sam
    ours = SAMBackbone.from_config(cfg, checkpoint=str(path))
    x = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        assert torch.equal(ours(x), encoder(ours.normalize(x)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsError, match="wrong.pth: does not fit the SAM encoder"):
        SAMBackbone.from_config(cfg, checkpoint=str(wrong))


def test_offline_downloads_fail_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("POSSAM_CACHE", str(tmp_path / "cache"))
    # An unroutable URL stands in for the offline official download.
    from possam_label.model import weights

    monkeypatch.setitem(weights.SAM_CHECKPOINT_URLS, "vit_b", "http://127.0.0.1:9/sam_vit_b_01ec64.pth")
    cfg = load_config(ROOT / "configs" / "possam_vit_b.yaml").sam
    with pytest.raises(WeightsError, match=r"sam_vit_b_01ec64\.pth.*sam\.checkpoint: /path/to/sam_vit_b_01ec64\.pth"):
        SAMBackbone.from_config(cfg, checkpoint="official")
    from possam_label.model.clip_backbone import build_open_clip

    clip_cfg = load_config(ROOT / "configs" / "possam_tiny.yaml").clip
    clip_cfg.model_cfg = None
    clip_cfg.model_name = "convnext_base"
    # Offline as huggingface_hub sees it: its constant is read at import, which an earlier test in
    # this process may have done (without it, the hub client retries for ~45 s before failing).
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"clip\.pretrained: /path/to/"):
        build_open_clip(clip_cfg, "laion400m_s13b_b51k")
