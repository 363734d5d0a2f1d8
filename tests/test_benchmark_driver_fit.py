"""pipelines.benchmark_driver's fit of the driver's CPU into a per-image and a per-second part."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.benchmark_driver import INPUTS, fit_driver_cost, make_listing


def _run(images: int, seconds: float, per_image_ms: float, per_second: float) -> dict:
    return {"measured_images": images, "measured_seconds": seconds, "driver_cpu_seconds": images * per_image_ms / 1000 + seconds * per_second}


def test_the_fit_recovers_both_costs_and_the_ceiling() -> None:
    slow, fast = _run(180, 30.0, 0.8, 0.05), _run(180, 4.0, 0.8, 0.05)  # 6 and 45 images/s
    fit = fit_driver_cost([slow, fast])
    assert fit["cpu_ms_per_image"] == pytest.approx(0.8, abs=1e-3)
    assert fit["cpu_seconds_per_second"] == pytest.approx(0.05, abs=1e-4)
    assert fit["fitted_ceiling_images_per_second"] == pytest.approx((1 - 0.05) / 0.0008, rel=1e-3)
    assert fit["rates_images_per_second"] == [6.0, 45.0]


def test_no_fit_from_one_rate() -> None:
    assert fit_driver_cost([_run(180, 30.0, 0.8, 0.05)]) is None
    assert fit_driver_cost([_run(180, 30.0, 0.8, 0.05), _run(200, 31.0, 0.8, 0.05)]) is None  # rates too close


def test_listings_link_real_images_under_distinct_names(tmp_path) -> None:
    for inputs in INPUTS:
        listing = make_listing(tmp_path / inputs, 10, inputs)
        paths = listing.read_text().split()
        assert len(set(paths)) == 10
        sources = {Path(p).resolve() for p in paths}
        assert sources <= {s.resolve() for s in INPUTS[inputs]} and len(sources) == min(10, len(INPUTS[inputs]))
