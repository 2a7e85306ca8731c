"""Slide preprocessing: tissue mask, units (spots or spot-sized patches) and per-unit targets."""
