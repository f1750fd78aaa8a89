"""History-augmented diagnosis (docs/history.md): find a new image's earlier images of
the same patient in an archive with the re-ID model, and diagnose with them.

- ``labels``: the diagnosis labels table (keyed by image_id);
- ``archive``: the on-disk FAISS archive index with its metadata; ``archive_files``:
  its files read back, each checked;
- ``calibration``: the verification threshold for a target false-accept rate;
- ``history_select``: which archived images may be history (earlier, not the same study);
- ``features``: the trained model, its embeddings and backbone features;
- ``diagnosis``, ``training``: the classifiers (current-only, with history);
- ``scoring``, ``experiment``, ``pictures``: metrics, the train/eval run, figures;
- ``trained_classifiers``: a ``train`` output's classifiers and their record, checked
  against the app config before ``eval`` (or the privacy evaluation) applies them;
- ``settings``: the app settings checked before any work;
- ``npz_files``: the archive's arrays and OUT's caches, read with errors that name the file;
- ``commands``, ``__main__``: ``python -m mami_jax.apps.history index|add|query|train|eval``.
"""
