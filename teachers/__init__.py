"""Offline teacher feature extraction (PyTorch side)."""
