"""Calibration mathematics on labelled cases (no I/O): conformal risk control of the referral threshold,
temperature scaling, predicted Dice with conformal intervals, and failure detection (AURC, E-AURC, AUROC).

Layer 2 (beside io/): imports only core/, so inference (which applies a calibration) and evaluation/cohort
(which fit and report one) can both use it.
"""
