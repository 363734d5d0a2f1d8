"""Run the autolabel job on a FiftyOne dataset or view, then load its output into the dataset.

This is what the App's "Run PosSAM autolabel" operator calls (as a delegated operation, so the App
stays responsive): :func:`possam_label.engine.autolabel.run_autolabel` labels the samples' files
into an output directory with Ray, and :func:`possam_label.fiftyone.load.load_autolabel_output`
loads that directory back into the same dataset.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Union

import fiftyone as fo

from .dataset import DEFAULT_LABEL_FIELD
from .load import LoadResult, load_autolabel_output

logger = logging.getLogger(__name__)


@dataclass
class AutolabelRunResult:
    autolabel: dict[str, Any]  # AutolabelSummary.to_dict()
    load: dict[str, Any]  # LoadResult.to_dict()

    def to_dict(self) -> dict:
        return asdict(self)


def autolabel_samples(
    samples: Union[fo.Dataset, fo.DatasetView],
    out_dir: Union[str, os.PathLike],
    label_field: str = DEFAULT_LABEL_FIELD,
    config: Optional[str] = None,
    checkpoint: Optional[str] = None,
    vocabulary: Optional[str] = None,
    batch_size: int = 4,
    num_cpus: Optional[int] = None,
    ray_address: Optional[str] = None,
    mode: str = "new",
    min_score: float = 0.0,
    progress: Optional[Callable[[float, str], None]] = None,
    **options: Any,
) -> AutolabelRunResult:
    """Autolabel the images of ``samples`` into ``out_dir`` and load the labels into its dataset.

    Args:
        samples: a dataset (its source is recorded as ``fiftyone://NAME``) or a view (its file
            paths are passed to the job in a listing file).
        out_dir: the autolabel output directory (``mode`` as in the CLI: new | resume | overwrite).
        label_field: where the labels go.
        config, checkpoint, vocabulary, batch_size, num_cpus, ray_address, min_score, **options:
            :class:`possam_label.engine.autolabel.AutolabelOptions` fields.
        progress: callback ``(fraction, message)`` (the load step reports through it).
    """
    from ..engine.autolabel import AutolabelOptions, run_autolabel

    dataset = samples._dataset
    listing_dir = None
    if isinstance(samples, fo.Dataset):
        source = f"fiftyone://{dataset.name}"
    else:
        paths = samples.values("filepath")
        if not paths:
            raise ValueError("the current view has no samples to autolabel")
        listing_dir = tempfile.mkdtemp(prefix="possam-autolabel-inputs-")
        source = os.path.join(listing_dir, "inputs.txt")
        with open(source, "w", encoding="utf-8") as fh:
            fh.write("\n".join(paths) + "\n")
    try:
        if progress is not None:
            progress(0.0, f"autolabel {len(samples)} samples into {out_dir}")
        summary = run_autolabel(
            AutolabelOptions(
                dataset=source,
                out_dir=os.fspath(out_dir),
                config=config,
                checkpoint=checkpoint,
                vocabulary=vocabulary,
                batch_size=batch_size,
                num_cpus=num_cpus,
                ray_address=ray_address,
                mode=mode,
                min_score=min_score,
                show_progress=False,
                **options,
            )
        )
    finally:
        if listing_dir is not None:
            try:
                os.unlink(os.path.join(listing_dir, "inputs.txt"))
                os.rmdir(listing_dir)
            except OSError:
                pass
    load_progress = (lambda f, m: progress(0.5 + 0.5 * f, m)) if progress is not None else False
    loaded: LoadResult = load_autolabel_output(out_dir, dataset, label_field=label_field, create=False, add_missing=False, progress=load_progress)
    return AutolabelRunResult(autolabel=summary.to_dict(), load=loaded.to_dict())
