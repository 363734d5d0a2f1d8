"""The distributed auto-labeling job: image files -> a predictor -> Parquet + COCO-panoptic, on Ray Data.

Data flow (one direction, streaming, memory bounded by the batches in flight)::

    input paths (from_items, with stable ids; already-committed ids skipped on --resume)
      -> DecodeImages        CPU tasks: robust decode to RGB, EXIF, downscale to the model's input side
      -> PanopticModelActor  actor pool, predictor loaded once per actor in its child process (GPU when given, else CPU)
      -> EncodeOutputs       CPU tasks: to the original size, score filter, RLE, PNG, segment rows
      -> driver              iter_batches: PNGs, then segments part, then images part (commit), atomically
      -> end                 panoptic.json streamed from the committed parts' metadata; run.json

Every input ends as exactly one ``images`` row: ``ok`` with its segments, or ``error`` with the
reason (unreadable, truncated, too large, model failure, ...). See ``docs/outputs.md``.

Modules, one concern each: :mod:`.options` (what a run is asked), :mod:`.inputs` (the image
files), :mod:`.stages` (the Ray stages), :mod:`.model_process` (the model in the actor's child
process), :mod:`.cluster` (Ray and the model actors' sizing), :mod:`.run_record` (run.json,
resume checks), :mod:`.job` (the driver). This package is the only
one (with the training engine) that imports ``ray``.
"""

from .cluster import CPU_STAGE_CPUS, DEFAULT_WAIT_FOR_WORKERS_S, WorkerPlan, actors_fit, default_torch_threads
from .inputs import FIFTYONE_PREFIX, list_inputs, unique_inputs
from .job import run_autolabel, write_panoptic_json
from .options import OPTION_GROUPS, AutolabelError, AutolabelOptions, AutolabelSummary
from .stages import DecodeImages, EncodeOutputs, PanopticModelActor, to_original_size

__all__ = [
    "CPU_STAGE_CPUS",
    "DEFAULT_WAIT_FOR_WORKERS_S",
    "FIFTYONE_PREFIX",
    "OPTION_GROUPS",
    "AutolabelError",
    "AutolabelOptions",
    "AutolabelSummary",
    "DecodeImages",
    "EncodeOutputs",
    "PanopticModelActor",
    "WorkerPlan",
    "actors_fit",
    "default_torch_threads",
    "list_inputs",
    "run_autolabel",
    "to_original_size",
    "unique_inputs",
    "write_panoptic_json",
]
