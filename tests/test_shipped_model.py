"""The shipped small PosSAM (trained on the synthetic world) on held-out synthetic scenes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from possam_label.config import DEFAULT_CONFIG
from possam_label.synthetic import generate_dataset
from possam_label.eval.model_eval import evaluate_predictor
from possam_label.predictor import PosSAMPredictor

ROOT = Path(__file__).resolve().parents[1]
SPLITS = yaml.safe_load((ROOT / "possam_label" / "assets" / "synthetic_world" / "splits.yaml").read_text())
# Lower bounds from the measured PQ of the shipped weights on these 40 scenes (seed 4242, never
# used in training), with a margin. Base: above the CI target (60); novel: above the issue's
# CI target (30), reached since step 7 (docs/small_model.md) (a CLIP that names shapes, novel classes scored by it)
# and well above since step 8 (its image tower trained longer, masked crops out of vocabulary).
MIN_PQ_BASE = 0.73  # measured 0.758 (MASE; step 7: 0.743, step 6: 0.695, step 5: 0.670, before it 0.621)
MIN_PQ_NOVEL = 0.45  # measured 0.532 (MASE; step 7: 0.332, step 6: 0.171; in-vocabulary only: 0.033)
MIN_MASE_GAIN_NOVEL = 0.40  # measured 0.498 (step 7: 0.279)

@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("held_out"), num_images=40, seed=4242)


@pytest.fixture(scope="module")
def predictor():
    return PosSAMPredictor.from_config(DEFAULT_CONFIG, device="cpu")


def test_default_model_loads_the_shipped_weights(predictor):
    identity = predictor.weights_identity()
    assert all(identity[k] for k in ("sam", "clip", "heads")), identity
    assert len(predictor.vocabulary) == 18 and len(predictor.train_vocabulary) == 13
    assert set(predictor.train_vocabulary.names) == set(SPLITS["base"])


def test_shipped_heads_were_trained_on_the_shipped_backbones():
    """The heads' metadata records the sha256 of the SAM and CLIP they were trained on: retraining a
    backbone without retraining the heads fails here."""
    import hashlib
    import json

    from safetensors import safe_open

    assets = ROOT / "possam_label" / "assets" / "small"
    with safe_open(str(assets / "possam_small_heads.safetensors"), "pt") as f:
        recorded = json.loads(f.metadata()["backbones_sha256"])
    for name in ("sam", "clip"):
        digest = hashlib.sha256((assets / f"{name}_small.safetensors").read_bytes()).hexdigest()
        assert recorded[name] == digest, f"{name}_small.safetensors is not the backbone the shipped heads were trained on"


@pytest.mark.slow
def test_shipped_model_pq_on_held_out_scenes(predictor, held_out):
    # The two MASE modes differ only after the network: one pass per scene serves both (the
    # in-vocabulary predictor replays the recorded network outputs).
    recorded = []
    network = predictor.forward_raw

    def recording_forward(pixels, text):
        recorded.append(network(pixels, text))
        return recorded[-1]

    predictor.forward_raw = recording_forward
    try:
        results = evaluate_predictor(predictor, held_out, batch_size=8, groups=SPLITS, progress=False)
    finally:
        del predictor.forward_raw
    base, novel = results["groups"]["base"], results["groups"]["novel"]
    assert base["n"] >= 10 and novel["n"] >= 3
    assert base["pq"] >= MIN_PQ_BASE, results["groups"]
    assert novel["pq"] >= MIN_PQ_NOVEL, results["groups"]
    # MASE's frozen-CLIP branch names the novel classes the heads never saw.
    in_vocab = PosSAMPredictor.from_config(DEFAULT_CONFIG, device="cpu", overrides={"mase": {"mode": "in_vocab"}})
    replay = iter(recorded)
    in_vocab.forward_raw = lambda pixels, text: next(replay)
    in_vocab_novel = evaluate_predictor(in_vocab, held_out, batch_size=8, groups=SPLITS, progress=False)["groups"]["novel"]
    assert next(replay, None) is None  # every recorded pass replayed, in order
    assert novel["pq"] >= in_vocab_novel["pq"] + MIN_MASE_GAIN_NOVEL, (results["groups"], in_vocab_novel)
