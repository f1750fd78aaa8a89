"""Embedding, retrieval and re-ID / verification metrics."""
