"""Renderers of the synthetic benchmark (see ``mami_jax.data.phantoms``).

One module per modality, each with ``make_anatomy(rng, size)`` (the
patient's persistent identity) and ``render(anatomy, rng, severity, size[,
slices])`` (one visit); ``disease`` holds the shared disease course, ``io``
the file formats, ``baselines`` the hardness and sanity measurements.
"""
