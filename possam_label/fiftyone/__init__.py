"""possam_label.fiftyone"""
