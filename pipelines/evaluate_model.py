"""Run a PosSAM config over a COCO-panoptic folder and report PQ (overall, things/stuff, base/novel).

Example (the shipped small model on 300 held-out synthetic scenes, each classification mode):
    python -m pipelines.make_synthetic --out data/world_eval --num-images 300 --seed 777
    python -m pipelines.evaluate_model --config configs/possam_small.yaml --data data/world_eval \\
        --splits possam_label/assets/synthetic_world/splits.yaml --modes mase in_vocab fc_clip --out results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from pipelines._cli import add_set_argument


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate_model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="model YAML (configs/*.yaml)")
    parser.add_argument("--model", default="possam", choices=["possam", "sam-clip"],
                        help="possam, or the training-free two-stage baseline sam-clip (its settings: the config's baseline section; --modes do not apply)")
    parser.add_argument("--checkpoint", default=None, help="PosSAM head weights, or a full SAM with --model sam-clip (default: the config's)")
    parser.add_argument("--data", required=True, help="COCO-panoptic folder: panoptic.json, images/, panoptic/")
    parser.add_argument("--vocab", default=None, help="vocabulary to predict with (default: the config's); its category ids must be the dataset's")
    parser.add_argument("--splits", default=None, help="YAML mapping group name -> class names (e.g. base/novel) for per-group PQ")
    parser.add_argument("--modes", nargs="+", default=["mase"], choices=["mase", "fc_clip", "in_vocab", "out_vocab"], help="classification modes to evaluate (mase.mode)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    add_set_argument(parser, "--set pixel_decoder.detail_stem=true (to match a checkpoint trained with it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import yaml

    from possam_label.config_mapping import parse_assignments
    from possam_label.eval.model_eval import evaluate_predictor
    from possam_label.predictors import build_predictor

    groups = None
    if args.splits:
        with open(args.splits) as fh:
            groups = yaml.safe_load(fh)
    predictor = build_predictor(args.model, args.config, checkpoint=args.checkpoint, device=args.device, overrides=parse_assignments(args.assignments))
    modes = args.modes if args.model == "possam" else [args.model]
    report = {}
    for mode in modes:
        if args.model == "possam":
            predictor.config.mase.mode = mode
        start = time.time()
        results = evaluate_predictor(predictor, args.data, vocabulary=args.vocab, batch_size=args.batch_size, limit=args.limit, groups=groups)
        results["seconds"] = time.time() - start
        report[mode] = results
        line = f"{mode:9s} PQ {100 * results['All']['pq']:5.1f}  things {100 * results['Things']['pq']:5.1f}  stuff {100 * results['Stuff']['pq']:5.1f}"
        for name, g in (results.get("groups") or {}).items():
            line += f"  {name} {100 * g['pq']:5.1f} (n={g['n']})"
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({mode: {k: v for k, v in r.items() if k != "per_class"} | {"per_class": {str(c): s for c, s in r["per_class"].items()}} for mode, r in report.items()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
