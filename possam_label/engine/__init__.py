"""possam_label.engine"""
