"""Calibration: dense passes that record per-channel activation statistics."""
