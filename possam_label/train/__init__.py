"""possam_label.train"""
