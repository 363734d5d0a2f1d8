"""Readers and writers: panoptic PNGs, COCO-panoptic JSON, Parquet tables, the output-directory store, RLE."""
