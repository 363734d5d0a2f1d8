"""possam-label: open-vocabulary panoptic auto-labeling with PosSAM."""

__version__ = "0.1.0"
