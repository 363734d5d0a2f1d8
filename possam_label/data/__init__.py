"""possam_label.data"""
