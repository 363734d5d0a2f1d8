"""Readers and writers: panoptic PNGs, COCO-panoptic JSON, Parquet tables, RLE."""
