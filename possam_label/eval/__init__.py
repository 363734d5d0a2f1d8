"""possam_label.eval"""
