"""Auto-accept at a measured precision, against a real FiftyOne database.

The labels here carry a hidden truth drawn with a known, class-dependent probability of being right
given the confidence; a simulated reviewer accepts or rejects the labels of some images, and the
estimate for the rest is compared with the truth of the rest.
"""

from __future__ import annotations

import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

from possam_label.fiftyone import corrections as C  # noqa: E402
from possam_label.fiftyone.auto_accept import ReviewOutcomes, auto_accept, estimate_auto_accept, review_outcomes  # noqa: E402
from possam_label.fiftyone.dataset import set_categories  # noqa: E402
from possam_label.fiftyone.load import ensure_review_fields  # noqa: E402
from possam_label.fiftyone.review import needs_review_view  # noqa: E402
from possam_label.fiftyone.testing import use_private_database  # noqa: E402
from possam_label.vocab import load_vocabulary  # noqa: E402

pytestmark = pytest.mark.fiftyone

# P(correct | confidence) per class: "disc" is well calibrated, "square" over-confident.
TRUTH = {"disc": lambda c: 0.15 + 0.8 * c, "square": lambda c: c**2}


@pytest.fixture(scope="module")
def db():
    try:
        return use_private_database()
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"no runnable mongod for FiftyOne: {err}")


def _dataset(name: str, num_samples: int = 300, per_sample: int = 10, seed: int = 3) -> tuple[fo.Dataset, dict[str, bool]]:
    """Samples of labels with a hidden truth: {label id: correct}."""
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    ensure_review_fields(ds, "possam")
    table = load_vocabulary(",".join(TRUTH))  # things, ids 1..K
    set_categories(ds, "possam", table)
    rng = np.random.default_rng(seed)
    truth: dict[str, bool] = {}
    samples = []
    for i in range(num_samples):
        dets = []
        for j in range(per_sample):
            cls = "disc" if rng.random() < 0.6 else "square"
            conf = float(rng.beta(2.0, 1.5))
            mask = np.zeros((4, 4), dtype=bool)
            mask[: 1 + j % 4, :] = True
            det = fo.Detection(label=cls, bounding_box=[0.05 * j, 0.1, 0.04, 0.04], mask=mask, confidence=conf,
                               segment_id=j + 1, category_id=table.by_name(cls).id, isthing=True)
            truth[det.id] = bool(rng.random() < TRUTH[cls](conf))
            dets.append(det)
        samples.append(fo.Sample(filepath=f"/nonexistent/{name}/{i:04d}.png", metadata=fo.ImageMetadata(width=100, height=100),
                                 possam=fo.Detections(detections=dets)))
    ds.add_samples(samples, progress=False)
    return ds, truth


def _review(ds: fo.Dataset, truth: dict[str, bool], sample_ids: list[str]) -> None:
    """A reviewer who knows the truth: rejects or deletes the wrong labels, accepts the right ones
    in half of the samples and leaves them (marking the sample reviewed) in the other half."""
    for k, sample_id in enumerate(sample_ids):
        sample = ds[sample_id]
        wrong = [d for d in sample.possam.detections if not truth[d.id]]
        right = [d for d in sample.possam.detections if truth[d.id]]
        if wrong:
            (C.delete_segments if k % 3 == 0 else C.reject_labels)(ds, [(sample_id, d.id) for d in wrong])
        if k % 2 == 0 and right:
            C.accept_labels(ds, [(sample_id, d.id) for d in right])
        else:
            C.mark_reviewed(ds, [sample_id])


def test_estimate_tracks_the_true_precision_of_the_rest(db) -> None:
    ds, truth = _dataset("auto_accept_estimate")
    ids = ds.values("id")
    reviewed = ids[:50]
    _review(ds, truth, reviewed)
    outcomes = review_outcomes(ds)
    reviewed_ids = [d.id for s in ds.select(reviewed) for d in list(s.possam.detections) + list(s.possam_deleted.detections if s.possam_deleted else [])]
    assert len(outcomes.correct) == len(reviewed_ids) == 500
    assert outcomes.correct.sum() == sum(truth[i] for i in reviewed_ids)
    estimate = estimate_auto_accept(ds, num_bootstrap=100)
    assert estimate.num_reviewed == 500 and estimate.num_unreviewed == 2500
    assert set(estimate.calibrated_classes) == {"disc", "square"}
    rest = [d for s in ds.select(ids[50:]) for d in s.possam.detections]
    for threshold in (0.3, 0.5, 0.7, 0.85):
        above = [truth[d.id] for d in rest if d.confidence >= threshold]
        at = estimate.at(threshold)
        assert at.num_labels == len(above)
        true_precision = float(np.mean(above))
        assert abs(at.precision - true_precision) < 0.04, (threshold, at.precision, true_precision)
        assert at.low - 0.01 <= true_precision <= at.high + 0.01, (threshold, at.low, true_precision, at.high)
        assert 0 < at.margin < 0.1
    # Precision grows with the threshold; the lowest threshold whose interval clears 80 % is reported.
    precisions = [e.precision for e in estimate.estimates if e.precision is not None]
    assert precisions[0] < precisions[-1]
    best = estimate.lowest_threshold_for(0.80)
    assert best is not None and best.low >= 0.80 and estimate.at(best.threshold - 0.01).low < 0.80
    assert estimate.at(0.72).describe().startswith(f"accept the {estimate.at(0.72).num_labels:,} labels at or above 0.72: estimated precision ")


def test_auto_accept_is_a_logged_revertible_correction(db) -> None:
    ds, truth = _dataset("auto_accept_action", num_samples=60)
    ids = ds.values("id")
    _review(ds, truth, ids[:20])
    estimate = estimate_auto_accept(ds, num_bootstrap=50)
    expected = {d.id for s in ds.select(ids[20:]) for d in s.possam.detections if d.confidence >= 0.7}
    result = auto_accept(ds, 0.7, estimate=estimate)
    assert set(result.label_ids) == expected and result.num_labels == len(expected)
    sample = ds[ids[30]]
    accepted = [d for d in sample.possam.detections if d.id in expected]
    assert accepted and all(d.review_status == "auto_accepted" and "auto_accepted" in d.tags for d in accepted)
    assert all(d.auto_accept_estimate == pytest.approx(estimate.at(0.7).precision) for d in accepted)
    entry = next(e for e in sample.possam_corrections if e["action"] == "auto_accept")
    assert entry["estimate"]["threshold"] == 0.7 and entry["estimate"]["num_reviewed"] == estimate.num_reviewed
    # Out of the review queue, kept by the export rules, not counted as reviewed outcomes.
    assert not set(needs_review_view(ds, 1.0).values("possam.detections.id", unwind=True)) & expected
    assert review_outcomes(ds).correct.size == estimate.num_reviewed
    assert auto_accept(ds, 0.7, estimate=estimate).num_labels == 0  # nothing left above it
    C.revert_corrections(ds, ids[20:])
    sample.reload()
    assert all(C.label_attr(d, "review_status") is None for d in sample.possam.detections)
    assert all(C.label_attr(d, "auto_accept_estimate") is None for d in sample.possam.detections)


def test_nothing_reviewed_is_a_clear_error(db) -> None:
    ds, _ = _dataset("auto_accept_empty", num_samples=5)
    with pytest.raises(ValueError, match="no reviewed labels"):
        estimate_auto_accept(ds)
    C.accept_labels(ds, [(ds.first().id, ds.first().possam.detections[0].id)])
    with pytest.raises(ValueError, match="both outcomes"):
        estimate_auto_accept(ds)


def test_an_unbroken_run_of_right_labels_is_not_certainty() -> None:
    """Reviewed labels right exactly above confidence 0.5 (40 samples of 5): the isotonic fit says 1
    above 0.5 and 0 below. The estimate takes the all-right top block of n labels as
    (n + 1/2) / (n + 1) (Jeffreys' prior) and the all-wrong bottom block of m as 1/2 / (m + 1), so
    the estimate for high-confidence labels is below 1 and its interval has a width."""
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.0, 1.0, 200)
    right = conf > 0.5
    unreviewed = np.repeat([0.05, 0.95], 150)  # clear of the gap the fit interpolates across
    outcomes = ReviewOutcomes(conf, np.full(200, "disc", dtype=object), right, unreviewed,
                              np.full(300, "disc", dtype=object), np.repeat(np.arange(40), 5))
    estimate = estimate_auto_accept(None, outcomes=outcomes, thresholds=[0.0, 0.9], num_bootstrap=100)
    top, bottom = int(right.sum()), int((~right).sum())
    at_high = estimate.at(0.9)
    assert at_high.num_labels == 150 and at_high.precision == pytest.approx((top + 0.5) / (top + 1.0))
    assert at_high.low < at_high.precision <= at_high.high <= 1.0  # an interval, not "100 % ± 0"
    everything = estimate.at(0.0)
    assert everything.precision == pytest.approx(((top + 0.5) / (top + 1.0) + 0.5 / (bottom + 1.0)) / 2)
