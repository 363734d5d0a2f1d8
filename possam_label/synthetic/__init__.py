"""The synthetic world: the project's embedded demo and test bed, not the product's training path.

No pretrained SAM or CLIP weights can reach the machines this project runs on, so it renders its
own panoptic scenes (textured stuff regions and shapes, with exact ground truth) and trains small
models on them; the shipped default model (``possam_label/assets/small``) was made this way, and
the tests label, review, export and train on these scenes.

Modules:
    classes: the world's class table, base/novel split and vocabularies.
    textures: procedural stuff textures and the noise they are made of.
    world: :func:`render_scene`, :func:`generate_dataset` (COCO-panoptic files), held-out scenes.
    small_sam: a small segment_anything ``Sam`` trained from scratch on the world
        (with sam_prompts, sam_losses, sam_warmup, sam_eval).
    small_clip: a small open_clip CLIP trained on the world (with captions, clip_data, clip_dense).

The world's public functions are importable from this package; the small models' modules import
torch, segment_anything and open_clip and are imported on their own.
"""

from .classes import (
    STUFF_CLASSES,
    THING_CLASSES,
    WorldClass,
    WorldIndex,
    classes_for_split,
    coco_categories,
    load_world_vocabulary,
    resolve_classes,
    thing_category_ids,
    world_classes,
    world_splits,
    world_vocab_path,
)
from .textures import prepare_texture_bank
from .world import (
    HELD_OUT_SEED,
    MIN_THING_AREA,
    SceneRenderer,
    default_scene_renderer,
    generate_dataset,
    held_out_scenes,
    render_scene,
    scene_rng,
)

__all__ = [
    "HELD_OUT_SEED",
    "MIN_THING_AREA",
    "STUFF_CLASSES",
    "THING_CLASSES",
    "SceneRenderer",
    "WorldClass",
    "WorldIndex",
    "classes_for_split",
    "coco_categories",
    "default_scene_renderer",
    "generate_dataset",
    "held_out_scenes",
    "load_world_vocabulary",
    "prepare_texture_bank",
    "render_scene",
    "resolve_classes",
    "scene_rng",
    "thing_category_ids",
    "world_classes",
    "world_splits",
    "world_vocab_path",
]
