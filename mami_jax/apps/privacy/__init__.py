"""Privacy protection with a trained MaMI: where identity lives in an image, and its removal.

- ``cues``: gradient and occlusion maps of how strongly each pixel drives the match
  between an image and the patient's other images;
- ``protect``: a bounded perturbation optimised against an ensemble of re-ID models and
  augmentations (``perturb``), and/or inpainting of the strongest identity regions
  (``inpaint``), written back in the input's own file format (``writers``);
- ``attack_eval``, ``quality``, ``utility``: how well a protection hides identity from
  re-ID models, how much it changes the image, and whether diagnosis still works;
- ``attacker``: the adaptive attacker's training manifest (protected training images);
- ``figures``: the pictures of docs/privacy.md.

Command line: ``python -m mami_jax.apps.privacy {cues,protect,attacker-manifest,evaluate}``;
settings in ``configs/privacy.py``; the method and results in docs/privacy.md, every
measurement in docs/privacy_experiments.md.
"""
