"""FiftyOne plugin ``@possam/review``: review PosSAM auto-labels in the App.

UI only: every operator calls one function of :mod:`possam_label.fiftyone`, which does the work
and can be called from Python just the same (see docs/review.md). Found by FiftyOne when
``FIFTYONE_PLUGINS_DIR`` points at the repository's ``plugins/`` directory (or where
``python -m pipelines.install_plugin`` copied it).

One module per concern; FiftyOne imports this package and calls :func:`register`:

- :mod:`.autolabel_ops`: labels into the dataset (load an autolabel output, run autolabel);
- :mod:`.review_ops`: confidence review of a view (review views, tags, auto-accept, editor edits);
- :mod:`.correction_ops`: corrections through forms (relabel, delete, accept, reject, merge,
  split, undo, mark reviewed, revert);
- :mod:`.quick_ops`: one-click actions in the sample viewer (accept, reject, delete, next in queue);
- :mod:`.sam_ops`: PosSAM's SAM (refine selected labels, segment and classify drawn boxes);
- :mod:`.export_ops`: the training-set export;
- :mod:`.train_ops`: train on the reviewed samples, relabel with the new heads;
- :mod:`.panel`: the review panel;
- :mod:`.operator_support`: what they share (label field, form inputs, shared threshold, progress).
"""

from __future__ import annotations

from .autolabel_ops import LoadAutolabelOutput, RunAutolabel
from .correction_ops import (
    AcceptLabels,
    DeleteSegments,
    MarkReviewed,
    MergeLabels,
    RejectLabels,
    RelabelSegments,
    RevertCorrections,
    SplitLabel,
    UndoCorrection,
)
from .export_ops import ExportTrainingSet
from .panel import ReviewPanel
from .quick_ops import NextInQueue, QuickAccept, QuickDelete, QuickReject
from .review_ops import AutoAccept, SaveReviewViews, SyncEditorEdits, TagByConfidence
from .sam_ops import OPERATORS as SAM_OPERATORS  # refine with SAM, segment and classify drawn boxes
from .train_ops import OPERATORS as TRAIN_OPERATORS  # train on reviewed samples, relabel with these heads

# In the order the App lists them.
OPERATORS_AND_PANELS = (
    LoadAutolabelOutput,
    SaveReviewViews,
    TagByConfidence,
    RelabelSegments,
    DeleteSegments,
    AcceptLabels,
    RejectLabels,
    MarkReviewed,
    RevertCorrections,
    ExportTrainingSet,
    RunAutolabel,
    QuickAccept,
    QuickReject,
    QuickDelete,
    NextInQueue,
    SyncEditorEdits,
    AutoAccept,
    MergeLabels,
    SplitLabel,
    UndoCorrection,
    *SAM_OPERATORS,
    ReviewPanel,
    *TRAIN_OPERATORS,
)


def register(p):
    for cls in OPERATORS_AND_PANELS:
        p.register(cls)
