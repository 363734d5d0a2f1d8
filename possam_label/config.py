"""One dataclass tree for every setting of possam-label, loaded from YAML in ``configs/``.

Configs are data: YAML is read with ``yaml.safe_load`` and mapped field by field onto the
dataclasses below (:mod:`possam_label.config_mapping`). Unknown keys and values of the wrong
type are errors that name the key.
Choices the method spec marks as inferred ([I]) are switches here (``ldp.fusion``,
``sam.feature``, ``mase.*``, ``train.iou_loss`` ...), so they can be ablated from YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import yaml

from .config_mapping import ConfigError, from_dict, merge, to_dict
from .resources import package_dir, shipped_dir

SAM_VARIANTS: dict[str, dict[str, Any]] = {
    # Sizes of segment_anything's build_sam.py builders.
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
}


# The configs of this installation: the repository's configs/, or its copy inside a wheel.
CONFIG_DIR = shipped_dir("configs")
# The shipped small model trained on the synthetic world: the default of every pipeline.
DEFAULT_CONFIG = CONFIG_DIR / "possam_small.yaml"


@dataclass
class SAMConfig:
    """Frozen SAM image encoder (segment_anything ``ImageEncoderViT``)."""

    variant: str = "vit_b"  # vit_b | vit_l | vit_h | custom
    # Local path, "official" (download the official checkpoint of ``variant`` into the cache),
    # or null (random init: tests and speed benchmarks only).
    checkpoint: Optional[str] = None
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: Optional[int] = None  # from the variant unless variant == custom
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    global_attn_indexes: Optional[list[int]] = None
    window_size: int = 14
    out_chans: int = 256
    # Which tensor feeds the pyramid [I]: "neck" (256-d, SAM unmodified) or "last_block".
    feature: str = "neck"
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])

    def resolved(self) -> "SAMConfig":
        """A copy with the size fields filled in from ``variant``."""
        out = copy.deepcopy(self)
        if self.variant == "custom":
            missing = [k for k in ("embed_dim", "depth", "num_heads", "global_attn_indexes") if getattr(self, k) is None]
            if missing:
                raise ConfigError(f"sam.variant 'custom' needs {', '.join('sam.' + m for m in missing)}")
            return out
        if self.variant not in SAM_VARIANTS:
            raise ConfigError(f"sam.variant must be one of {sorted(SAM_VARIANTS) + ['custom']}, got {self.variant!r}")
        for key, value in SAM_VARIANTS[self.variant].items():
            current = getattr(self, key)
            if current is not None and current != value:
                raise ConfigError(f"sam.{key}={current} contradicts sam.variant={self.variant} ({value}); use variant: custom")
            setattr(out, key, copy.deepcopy(value))
        return out


@dataclass
class CLIPConfig:
    """Frozen open_clip model: dense ConvNeXt features, text tower and the out-of-vocabulary head."""

    model_name: str = "convnext_large_d_320"
    # An open_clip pretrained tag, a local .safetensors/.bin/.pt file, or null (random init).
    pretrained: Optional[str] = "laion2b_s29b_b131k_ft_soup"
    # A custom open_clip model config (the JSON of open_clip's model_configs) registered
    # under ``model_name``; null uses open_clip's built-in config of that name.
    model_cfg: Optional[dict[str, Any]] = None
    # Side of the square image given to CLIP; null means the SAM input size (one padded image for both).
    image_size: Optional[int] = None
    pixel_mean: list[float] = field(default_factory=lambda: [122.7709383, 116.7460125, 104.09373615])
    pixel_std: list[float] = field(default_factory=lambda: [68.5005327, 66.6321579, 70.32316305])
    # ViLD templates (spec 3.4); a shorter list trades accuracy for text-encoding time.
    templates: str = "vild"  # vild | single
    text_chunk_size: int = 128
    # [I] What the out-of-vocabulary classifier reads for each mask (model/masked_crop.py):
    # "mask_pool" pools the dense features inside it (FC-CLIP's and the spec's, section 4),
    # "masked_crop" gives CLIP the mask cut out of the image (outside it: pixel_mean) as an image,
    # "mean" averages the two normalised embeddings. The crops cost one CLIP image forward per query.
    out_vocab_source: str = "mask_pool"
    # Side of the masked crops; null: the CLIP model's own input size.
    mask_crop_size: Optional[int] = None
    # The mask's box is made square and enlarged by this factor before cropping.
    mask_crop_margin: float = 1.4
    # "things": with out_vocab_source "mean", stuff classes keep the mask-pooled logits alone (a
    # region cut out onto a flat colour looks like no stuff CLIP has seen); "all": every class.
    mask_crop_classes: str = "all"


@dataclass
class PyramidConfig:
    """ViTDet simple feature pyramid from the single stride-16 SAM map [I]."""

    out_channels: int = 256


@dataclass
class PixelDecoderConfig:
    """Mask2Former multi-scale deformable-attention pixel decoder (pure PyTorch)."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    num_groups: int = 32
    # Add stride-4 features computed from the pixels by a small trainable CNN to the mask
    # features (model/detail_stem.py): the stride-4 backbone stage Mask2Former's pixel decoder
    # uses, which a plain ViT lacks. Off in the paper's design (SAM at 1024 px has the detail).
    detail_stem: bool = False
    detail_stem_channels: int = 32


@dataclass
class DecoderConfig:
    """Masked-attention transformer decoder."""

    hidden_dim: int = 256
    num_queries: int = 250
    num_layers: int = 9
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.0
    pre_norm: bool = False
    mask_head_layers: int = 3


@dataclass
class IoUHeadConfig:
    """Mask-quality (IoU) head [I]: MLP on the normalised query output, sigmoid output."""

    num_layers: int = 3
    hidden_dim: int = 256


@dataclass
class LDPConfig:
    """Local Discriminative Pooling [I]."""

    # pixel_add: F_ldp = proj(CLIP) + F_masked; pixel_gated: proj(CLIP) * sigmoid(conv(F_masked)) + F_masked;
    # pool_then_fuse: pool CLIP (stride 32) and F_masked (stride 4) separately, then sum.
    fusion: str = "pixel_add"
    use_query_embedding: bool = True
    logit_scale_init: float = 1.0 / 0.07
    logit_scale_max: float = 100.0
    # Add an embedding of each mask's outline (cropped, resized, small CNN) to the pooled one:
    # the geometry mask pooling discards. Off in the paper's design.
    shape_encoder: bool = False
    shape_crop_size: int = 24
    # Add an embedding of the image in a square box around each mask, at the input's full
    # resolution, with the mask as a fourth channel (model/mask_shape.py): outlines sharper than
    # the stride-4 mask logits. Its output starts at zero (warm starts keep the trained heads).
    crop_encoder: bool = False
    crop_encoder_size: int = 32
    # groupnorm_small: 5 GroupNorm convolutions (16-64 channels); batchnorm_wide: 6 BatchNorm
    # convolutions (32-128 channels), for an encoder pretrained on predicted masks
    # (pipelines.pretrain_crop_encoder --mask-source predicted). See model/mask_shape.py.
    crop_encoder_arch: str = "groupnorm_small"


@dataclass
class MASEConfig:
    """Mask-Aware Selective Ensembling (spec section 6) and its baselines."""

    # mase: per-image selective ensemble; fc_clip: static name-overlap ensemble (FC-CLIP);
    # in_vocab: LDP only; out_vocab: frozen CLIP only (void from LDP in both).
    mode: str = "mase"
    alpha: float = 0.4
    beta: float = 0.8
    threshold_rule: str = "image_mean"  # image_mean | fixed | percentile
    iou_threshold: float = 0.5  # used by "fixed"
    conf_threshold: float = 0.5  # used by "fixed"
    percentile: float = 50.0  # used by "percentile"
    granularity: str = "query"  # query | query_class | image_class
    gamma: float = 1.0  # score = class prob * iou ** gamma
    drop_iou_threshold: float = 0.0  # queries with predicted IoU below this are dropped
    # [I] LDP learns "void" for whatever looked unlike the training classes, novel objects
    # included, while the frozen CLIP has seen them: p_void <- p_void * (1 - s * P_clip(novel)),
    # P_clip(novel) the frozen CLIP's probability mass on classes outside the training
    # vocabulary, s = novel_void_suppression in [0, 1] (0 keeps the spec's void, LDP alone).
    novel_void_suppression: float = 0.0
    # [I] None: a query is void when void is its argmax over K + 1 (Mask2Former's panoptic rule).
    # A number t: a query is void only when p_void >= t, otherwise it takes its best class (as
    # Mask2Former's instance inference ignores void); the panoptic merge then drops duplicates.
    void_threshold: Optional[float] = None


@dataclass
class PostprocessConfig:
    """Mask2Former panoptic post-processing (spec 8.3)."""

    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.8
    min_segment_area: int = 0


@dataclass
class BaselineConfig:
    """The training-free two-stage baseline: SAM's automatic mask generator, then CLIP per mask."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_region_area: int = 0
    # mask_pooled: pool the dense CLIP features in each mask (one CLIP pass per image);
    # crop: crop each mask's box (background blanked) and embed it with CLIP (one pass per mask).
    classify: str = "mask_pooled"
    crop_size: int = 224
    crop_context: float = 0.1  # box margin as a fraction of its size
    # Candidate masks scored at or below it (CLIP class probability x SAM predicted IoU) are
    # dropped before the panoptic merge: this path's counterpart of
    # ``postprocess.object_mask_threshold`` (the autolabel ``min_score`` filters finished segments).
    object_mask_threshold: float = 0.0
    # SAM weights of this path when they differ from ``sam.checkpoint`` (same architecture;
    # None: ``sam.checkpoint``). Resolved like every other path of the config.
    sam_checkpoint: Optional[str] = None

    # Keys of earlier versions and their names now: a config that uses one is refused with both.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"min_score": "object_mask_threshold"}


@dataclass
class TrainConfig:
    """Training recipe (spec section 7)."""

    batch_size: int = 16
    max_iters: int = 368750
    lr: float = 1e-4
    weight_decay: float = 0.05
    lr_steps: list[int] = field(default_factory=lambda: [327778, 355092])
    lr_gamma: float = 0.1
    warmup_iters: int = 10
    grad_clip: float = 0.01
    amp: bool = True
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    iou_weight: float = 1.0
    void_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    # Mask2Former's deep supervision: losses on every decoder stage (False: the final stage only).
    deep_supervision: bool = True
    # Head modules kept fixed, by PosSAM attribute name (pyramid, pixel_decoder, detail_stem,
    # transformer_decoder, mask_quality_head, ldp) or a module inside one (ldp.crop_encoder.convs):
    # retrain one part on top of trained heads, or keep a pretrained part as it is.
    frozen_modules: list[str] = field(default_factory=list)
    iou_loss: str = "mse"  # mse | smooth_l1
    iou_supervise_unmatched: bool = True
    lsj_min_scale: float = 0.1
    lsj_max_scale: float = 2.0
    # Encode every training image once with the frozen backbones and train the heads on the
    # cached features (no augmentation then). Makes CPU training of small models affordable.
    cache_features: bool = False
    # Start a new run from these head weights (fine-tuning, or a module newly switched on):
    # tensors whose name and shape match are loaded, the rest keep their initialisation.
    init_heads: Optional[str] = None
    checkpoint_every: int = 5000
    log_every: int = 20
    num_workers: int = 2  # data-loader processes per trainer worker
    seed: int = 0


@dataclass
class PosSAMConfig:
    """The whole model and its recipe. One YAML file per model size in ``configs/``."""

    name: str = "possam"
    sam: SAMConfig = field(default_factory=SAMConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    iou_head: IoUHeadConfig = field(default_factory=IoUHeadConfig)
    ldp: LDPConfig = field(default_factory=LDPConfig)
    mase: MASEConfig = field(default_factory=MASEConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # PosSAM head weights (safetensors); relative paths are resolved against the config file.
    checkpoint: Optional[str] = None
    # Vocabulary used when the caller gives none: "coco", "ade20k", a file or "a,b,c".
    vocabulary: str = "coco"
    # The classes the heads were trained on (the "seen" classes for FC-CLIP's static ensemble).
    train_vocabulary: str = "coco"
    # Directory of the config file, set by ``load_config`` (not a YAML key).
    base_dir: Optional[str] = field(default=None, metadata={"yaml": False})

    def model_identity(self) -> dict[str, Any]:
        """The settings that fix the trainable heads' architecture (recorded in checkpoints)."""
        sam = self.sam.resolved()
        clip_keys = {"model_name": self.clip.model_name, "model_cfg": self.clip.model_cfg}
        return {
            "sam": {k: getattr(sam, k) for k in ("img_size", "embed_dim", "depth", "num_heads", "out_chans", "feature")},
            "clip": clip_keys,
            "pyramid": dataclasses.asdict(self.pyramid),
            "pixel_decoder": dataclasses.asdict(self.pixel_decoder),
            "decoder": dataclasses.asdict(self.decoder),
            "iou_head": dataclasses.asdict(self.iou_head),
            "ldp": {k: v for k, v in dataclasses.asdict(self.ldp).items() if k != "logit_scale_init"},
        }

    @staticmethod
    def identity_defaults() -> dict[str, Any]:
        """Default values of the identity's head sections: a checkpoint whose identity lacks a key
        (made before the setting existed) matches a config that holds the key's default."""
        identity = PosSAMConfig().model_identity()
        return {section: values for section, values in identity.items() if section not in ("sam", "clip")}

    def resolve_path(self, value: Optional[str]) -> Optional[str]:
        """Resolve a path written in the config relative to the config file's directory."""
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            candidate = Path(self.base_dir) / path
            if candidate.exists() or not path.exists():
                return str(candidate)
        return str(path)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def find_config(spec: Union[str, Path]) -> Path:
    """The absolute path of the YAML file a config argument names.

    A file that exists (relative to the current directory) is taken as it is. Otherwise a config
    of this installation is looked up by its name (``possam_small``) or by its repository path
    (``configs/possam_small.yaml``), so that the README's commands work from any folder and from a
    wheel. A spec that names nothing is returned as an absolute path (reading it then fails with
    the file's name).
    """
    path = Path(spec).expanduser()
    if not path.is_file() and not path.is_absolute():
        if len(path.parts) == 1 and not path.suffix:
            shipped = CONFIG_DIR / f"{path.name}.yaml"
        elif len(path.parts) == 2 and path.parts[0] == "configs":
            shipped = CONFIG_DIR / path.name
        else:
            shipped = None
        if shipped is not None and shipped.is_file():
            return shipped
    return Path(os.path.abspath(path))


def config_base_dir(config_file: Path) -> Path:
    """The directory a config file's relative paths start from: its own directory.

    Except for the configs a wheel carries inside the package (``possam_label/configs``): they are
    written for the repository layout, where ``configs/`` sits next to the package (paths such as
    ``../possam_label/assets/...``), so their paths start from the package directory, which is at
    that level and leads to the same files.
    """
    config_dir = config_file.resolve().parent
    if config_dir == (package_dir() / "configs").resolve():
        return package_dir()
    return config_dir


def load_config(path: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> PosSAMConfig:
    """Read a YAML config into a :class:`PosSAMConfig`.

    Args:
        path: YAML file, or the name of a shipped config (:func:`find_config`).
        overrides: nested mapping merged over the file's content (e.g. ``{"mase": {"mode": "fc_clip"}}``).
    """
    path = find_config(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if overrides:
        data = merge(data, overrides)
    try:
        cfg = from_dict(PosSAMConfig, data)
        cfg.sam.resolved()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    cfg.base_dir = str(config_base_dir(path))
    return cfg


def config_from_json(text: str) -> PosSAMConfig:
    """Inverse of ``json.dumps(cfg.to_dict())`` (used for configs stored in checkpoints)."""
    return from_dict(PosSAMConfig, json.loads(text))
