"""possam_label.model"""
