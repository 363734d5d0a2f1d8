"""Baselines to compare PosSAM with: the training-free two-stage SAM + CLIP labeler (:mod:`.sam_clip`)."""
