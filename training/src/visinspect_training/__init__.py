"""Fit PaDiM on images of good parts, evaluate it, and export a calibrated OpenVINO model repository."""
