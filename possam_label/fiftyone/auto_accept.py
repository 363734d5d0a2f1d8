"""Auto-accept at a measured precision: what the labels already reviewed say about the rest.

Every reviewed label is an outcome of the model's confidence:

* correct as predicted: ``accepted``, and (by default) the undecided labels of a sample a reviewer
  marked reviewed, who fixed what was wrong and left the rest;
* wrong as predicted: ``rejected``, ``relabeled`` (wrong class), ``edited`` (mask or box needed
  fixing), deleted (in ``<field>_deleted``);
* not outcomes: labels a reviewer drew (``added``, no model score) and ``auto_accepted`` ones.

An isotonic regression of correct-vs-confidence (scikit-learn; per predicted class where that
class has enough reviewed labels of both outcomes, else one for all classes) gives each unreviewed
label a probability of being right; the estimated precision of accepting every unreviewed label
at or above a threshold is the mean of theirs. Its 95 % interval is a bootstrap over the reviewed
samples (refit, re-estimate; one image's labels tend to succeed or fail together), with each
unreviewed label's outcome drawn from its refitted probability, so that it is an interval for the
precision the accepted labels will have, not only for its expectation. Because the calibration is
conditional on confidence, a review that looked mostly at low-confidence labels (the needs-review
queue) still estimates the precision of the high-confidence rest, as long as the reviewed labels
span the confidences it is asked about.

:func:`auto_accept` accepts them (``review_status="auto_accepted"``, the estimate stored on each
label and in the corrections log); revert undoes it like any correction.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from sklearn.isotonic import IsotonicRegression

import fiftyone as fo
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from .corrections import apply_correction
from .review_record import ACCEPTED, ADDED, AUTO_ACCEPTED, EDITED, REJECTED, RELABELED, CorrectionResult, set_status
from .dataset import DEFAULT_LABEL_FIELD, ReviewFields
from .review_stats import ReviewSnapshot, review_snapshot

logger = logging.getLogger(__name__)

_CORRECT = {ACCEPTED}
_WRONG = {REJECTED, RELABELED, EDITED}
_NOT_OUTCOMES = {ADDED, AUTO_ACCEPTED}
DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 101))


@dataclass
class ThresholdEstimate:
    """Accepting the ``num_labels`` unreviewed labels at or above ``threshold``."""

    threshold: float
    num_labels: int
    precision: Optional[float]  # estimated; None without labels above the threshold
    low: Optional[float]  # 95 % bootstrap interval
    high: Optional[float]

    @property
    def margin(self) -> Optional[float]:
        """Half-width of the interval around the estimate (the larger side)."""
        if self.precision is None:
            return None
        return max(self.precision - self.low, self.high - self.precision)

    def describe(self) -> str:
        if self.precision is None:
            return f"no unreviewed labels at or above {self.threshold:.2f}"
        return (f"accept the {self.num_labels:,} labels at or above {self.threshold:.2f}: estimated precision "
                f"{100 * self.precision:.0f} % ± {100 * self.margin:.0f}")


@dataclass
class AutoAcceptEstimate:
    """Estimated precision of auto-accepting, for each threshold."""

    num_reviewed: int
    num_correct: int
    num_unreviewed: int
    calibrated_classes: list[str]  # classes with their own calibration (the rest share one)
    estimates: list[ThresholdEstimate] = field(default_factory=list)

    def at(self, threshold: float) -> ThresholdEstimate:
        """The estimate for the smallest tabulated threshold >= ``threshold``."""
        for estimate in self.estimates:
            if estimate.threshold >= threshold - 1e-9:
                return estimate
        return self.estimates[-1]

    def lowest_threshold_for(self, precision: float, use_lower_bound: bool = True) -> Optional[ThresholdEstimate]:
        """The lowest threshold whose estimate (its interval's lower end by default) reaches ``precision``."""
        for estimate in self.estimates:
            value = estimate.low if use_lower_bound else estimate.precision
            if estimate.num_labels and value is not None and value >= precision:
                return estimate
        return None

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- outcomes
@dataclass
class ReviewOutcomes:
    """Reviewed labels (confidence, predicted class, correct) and the unreviewed ones."""

    confidence: np.ndarray
    label: np.ndarray
    correct: np.ndarray
    unreviewed_confidence: np.ndarray
    unreviewed_label: np.ndarray
    sample: np.ndarray  # of each reviewed label: the index of its sample (the bootstrap draws samples)


def review_outcomes(
    samples: SampleCollection, label_field: str = DEFAULT_LABEL_FIELD, reviewed_samples_accept_rest: bool = True,
    snapshot: Optional[ReviewSnapshot] = None,
) -> ReviewOutcomes:
    """Collect the outcomes (see the module docstring) from the review snapshot
    (:mod:`.review_stats`: scores, classes and statuses only, no masks loaded). A label's
    predicted class is its ``original_label`` when a reviewer changed it."""
    snapshot = snapshot if snapshot is not None else review_snapshot(samples, label_field)
    names = np.asarray([str(c) for c in snapshot.classes] + ["None"], dtype=object)
    predicted = names[np.where(snapshot.predicted < 0, len(snapshot.classes), snapshot.predicted)]
    status = snapshot.status
    scored = ~np.isnan(snapshot.confidence)

    def rows_of(names_: set) -> np.ndarray:
        return np.isin(status, [snapshot.status_index(n) for n in names_])

    current = snapshot.current() & scored & ~rows_of(_NOT_OUTCOMES)
    undecided = status < 0
    accepted_rest = undecided & snapshot.reviewed[snapshot.sample_row] if reviewed_samples_accept_rest else np.zeros_like(undecided)
    correct = current & (rows_of(_CORRECT) | accepted_rest)
    wrong = (current & ~correct & rows_of(_WRONG)) | (snapshot.deleted_rows() & scored)
    unreviewed = np.flatnonzero(current & undecided & ~accepted_rest)
    # Labels in sample-id order (the order of a dataset's samples; the snapshot's own row order
    # depends on which samples changed when), the deleted ones last: the bootstrap draws by
    # position, so the estimate does not depend on the review's history.
    rank = np.empty(len(snapshot.sample_ids), dtype=np.int64)
    rank[np.argsort(np.asarray(snapshot.sample_ids, dtype=object), kind="stable")] = np.arange(rank.size)

    def ordered(rows: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(rows)
        return rows[np.lexsort((rows, rank[snapshot.sample_row[rows]]))]

    outcome = np.concatenate([ordered((correct | wrong) & ~snapshot.deleted), ordered(wrong & snapshot.deleted)])
    unreviewed = unreviewed[np.lexsort((unreviewed, rank[snapshot.sample_row[unreviewed]]))]
    return ReviewOutcomes(
        snapshot.confidence[outcome], predicted[outcome], correct[outcome],
        snapshot.confidence[unreviewed], predicted[unreviewed], rank[snapshot.sample_row[outcome]],
    )


# ---------------------------------------------------------------------------- estimation
def _calibrate(conf: np.ndarray, correct: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """P(correct) at confidences ``targets``: the isotonic fit of ``correct`` on ``conf``, with its
    all-right top block (and all-wrong bottom block) of n labels taken as (n + 1/2) / (n + 1) (and
    1/2 / (n + 1)), the posterior mean under Jeffreys' prior: n right answers in a row do not make
    the next one certain, and a probability of exactly 1 would give a zero-width interval."""
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    fitted = model.fit_transform(conf, correct.astype(np.float64))
    probs = model.predict(targets)
    top, bottom = fitted >= 1.0, fitted <= 0.0
    # A cap (and a floor), not a replacement, so that the values the fit interpolates between its
    # blocks stay monotonic; never below the block under it (a top block of one label is no reason
    # to doubt a block of fifty right at 0.95).
    if top.any():
        probs = np.minimum(probs, max((top.sum() + 0.5) / (top.sum() + 1.0), float(fitted[~top].max(initial=0.0))))
    if bottom.any():
        probs = np.maximum(probs, min(0.5 / (bottom.sum() + 1.0), float(fitted[~bottom].min(initial=1.0))))
    return probs


def _calibrated_probabilities(
    outcomes: ReviewOutcomes, index: np.ndarray, classes: Sequence[str]
) -> np.ndarray:
    """P(correct) of every unreviewed label from the reviewed labels ``index`` (a bootstrap draw)."""
    conf, label, correct = outcomes.confidence[index], outcomes.label[index], outcomes.correct[index]
    probs = _calibrate(conf, correct, outcomes.unreviewed_confidence)
    for name in classes:
        mine = label == name
        if mine.sum() < 2 or correct[mine].all() or not correct[mine].any():
            continue  # this draw holds one outcome only for the class: the shared calibration stands
        targets = outcomes.unreviewed_label == name
        if targets.any():
            probs[targets] = _calibrate(conf[mine], correct[mine], outcomes.unreviewed_confidence[targets])
    return probs


def _bootstrap_draws(sample: np.ndarray, num_draws: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Reviewed-label indices of each bootstrap draw: as many samples as were reviewed, drawn with
    replacement, each bringing all its reviewed labels."""
    order = np.argsort(sample, kind="stable")
    _, starts = np.unique(sample[order], return_index=True)
    members = np.split(order, starts[1:])
    for _ in range(num_draws):
        yield np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])


def estimate_auto_accept(
    samples: SampleCollection,
    label_field: str = DEFAULT_LABEL_FIELD,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_class_reviews: int = 40,
    min_class_outcomes: int = 5,
    num_bootstrap: int = 200,
    seed: int = 0,
    reviewed_samples_accept_rest: bool = True,
    outcomes: Optional[ReviewOutcomes] = None,
) -> AutoAcceptEstimate:
    """Estimated precision (95 % bootstrap interval) of auto-accepting the unreviewed labels of
    ``samples`` at or above each threshold.

    Args:
        min_class_reviews, min_class_outcomes: a class gets its own isotonic calibration when it
            has this many reviewed labels, with at least ``min_class_outcomes`` right and wrong.
        num_bootstrap: bootstrap draws of the reviewed samples for the interval.
        reviewed_samples_accept_rest: undecided labels of samples marked reviewed count as correct.
    Raises:
        ValueError: no reviewed label, or reviewed labels of one outcome only (nothing to calibrate).
    """
    outcomes = outcomes if outcomes is not None else review_outcomes(samples, label_field, reviewed_samples_accept_rest)
    n = len(outcomes.correct)
    if n == 0:
        raise ValueError("no reviewed labels yet: accept, reject, relabel or delete some labels (or mark reviewed samples) first")
    if outcomes.correct.all() or not outcomes.correct.any():
        kind = "correct" if outcomes.correct.all() else "wrong"
        raise ValueError(f"all {n} reviewed labels are {kind}: the estimate needs reviewed labels of both outcomes")
    classes = []
    for name in sorted(set(outcomes.label.tolist())):
        mine = outcomes.correct[outcomes.label == name]
        if len(mine) >= min_class_reviews and mine.sum() >= min_class_outcomes and (~mine).sum() >= min_class_outcomes:
            classes.append(name)
    thresholds = np.asarray(sorted(float(t) for t in thresholds))
    order = np.argsort(-outcomes.unreviewed_confidence, kind="stable")
    sorted_conf = outcomes.unreviewed_confidence[order]
    # Labels at or above each threshold are a prefix of the confidence-descending order.
    counts = np.searchsorted(-sorted_conf, -thresholds, side="right")

    def precisions(probs: np.ndarray) -> np.ndarray:
        cumulative = np.concatenate([[0.0], np.cumsum(probs[order])])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, cumulative[counts] / np.maximum(counts, 1), np.nan)

    point = precisions(_calibrated_probabilities(outcomes, np.arange(n), classes))
    # Each draw refits on resampled reviewed samples, then draws the outcome of every unreviewed
    # label from its refitted probability: the interval is for the precision these labels will
    # actually have, which varies around its expectation too.
    rng = np.random.default_rng(seed)
    draws = np.stack([
        precisions((rng.random(len(order)) < _calibrated_probabilities(outcomes, index, classes)).astype(np.float64))
        for index in _bootstrap_draws(outcomes.sample, num_bootstrap, rng)
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # thresholds above every label: all-NaN columns
        low, high = np.nanpercentile(draws, 2.5, axis=0), np.nanpercentile(draws, 97.5, axis=0)
    estimates = [
        ThresholdEstimate(
            threshold=float(t), num_labels=int(c),
            precision=None if c == 0 else float(p),
            low=None if c == 0 else float(min(lo, p)),
            high=None if c == 0 else float(max(hi, p)),
        )
        for t, c, p, lo, hi in zip(thresholds, counts, point, low, high)
    ]
    return AutoAcceptEstimate(
        num_reviewed=n, num_correct=int(outcomes.correct.sum()), num_unreviewed=len(outcomes.unreviewed_confidence),
        calibrated_classes=classes, estimates=estimates,
    )


# ------------------------------------------------------------------------------- action
def unreviewed_above(samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD,
                     reviewed_samples_accept_rest: bool = True) -> SampleCollection:
    """The unreviewed labels at or above ``threshold`` (a view showing only them)."""
    fields = ReviewFields(label_field)
    view = samples
    if reviewed_samples_accept_rest and samples.has_field(fields.reviewed):
        view = view.match(F(fields.reviewed) != True)  # noqa: E712
    return view.filter_labels(label_field, (F("confidence") >= float(threshold)) & ~F("review_status").exists())


def auto_accept(
    samples: SampleCollection,
    threshold: float,
    label_field: str = DEFAULT_LABEL_FIELD,
    estimate: Optional[AutoAcceptEstimate] = None,
) -> CorrectionResult:
    """Accept every unreviewed label of ``samples`` at or above ``threshold`` as ``auto_accepted``,
    recording the estimate (computed here when not given) on each label and in the log."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    estimate = estimate if estimate is not None else estimate_auto_accept(samples, label_field)
    at = estimate.at(threshold)
    record = {"threshold": float(threshold), "precision": at.precision, "low": at.low, "high": at.high,
              "num_reviewed": estimate.num_reviewed}
    view = unreviewed_above(samples, threshold, label_field)
    sample_ids, label_ids = view.values(["id", f"{label_field}.detections.id"])
    selection = [(sid, lid) for sid, ids in zip(sample_ids, label_ids) for lid in (ids or [])]
    if not selection:
        return CorrectionResult(action="auto_accept")

    def change(sample: fo.Sample, det: fo.Detection, when) -> None:
        set_status(det, AUTO_ACCEPTED, when)
        det["auto_accept_estimate"] = at.precision

    result = apply_correction(samples._dataset, selection, label_field, "auto_accept", change, repaint=False, extra_log={"estimate": record})
    logger.info("auto-accepted %d labels at or above %.2f (estimated precision %s)", result.num_labels, threshold, at.precision)
    return result
