"""Checkpoint interchange with PyTorch (official MaMI weights, CLIP, export)."""
