"""Offline teacher feature extraction (the PyTorch side; ``pip install -e ".[teachers]"``).

Frozen foundation models are run once, never by the JAX trainer:
``python -m teachers.extract --manifest FILE --teachers NAMES --out DIR`` stores their
features as TFRecord shards plus an index, which ``mami_jax.data.teacher_features``
reads without torch or TensorFlow, and ``python -m mami_jax.evaluate.features`` scores
as zero-shot re-identification baselines.

- ``registry``: the teachers (medical bag, ``efficientnet_lite0``, ``anatomy``,
  ``random_tiny``) with their inputs and stored features;
- ``loaders``: builds each from local weights through its library (transformers,
  timm, open_clip, MONAI, efficientnet-lite-pytorch), with a weight fingerprint;
- ``preprocess``: decoded manifest row -> the teacher's input;
- ``anatomy``: the phantom generator's hidden parameters as a teacher;
- ``writer`` / ``extract``: resumable, shardable TFRecord writing and the command line.
"""
