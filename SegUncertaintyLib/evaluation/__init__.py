"""Evaluation against references: calibration, referral, quality, cohort statistics, evaluate and report."""
