"""Datasets, manifests, splits, the input pipeline and the synthetic phantoms."""
