"""Keeping the diagnosis while identity is removed: a term of the protection objective.

Protection must change what identifies the patient and keep what diagnoses them. The
match score alone does not know the difference, and on the phantoms the change it makes
also moves what diagnosis classifiers read (CT and pathology lose AUC, docs/privacy_experiments.md).
PriCheXy-Net trains its deformation with a diagnosis loss beside the identity loss; this
is the same idea for the optimised perturbation: with ``perturb.keep_diagnosis`` set to a
history ``train`` output trained on the protecting model (``--workdir``'s run, checked by
its parameter fingerprint), every step also minimises ``perturb.keep_weight`` times the
mean squared change of that current-only classifier's logits from the original image's.
The term is zero at the original, so it only pulls back once the diagnosis starts to move.

The classifier reads the history application's features of the protecting model (the
embedding and the pooled last-block map, ``apps.history.features``), standardised with
the statistics of its training images of the modality, exactly as ``history_utility``
applies it; the term is computed on the same random view as the match score.
Utility is then judged with a different diagnosis model that never saw a protected image
(``python -m mami_jax.apps.privacy evaluate --history-classifier``, e.g. on a held-out re-ID model).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.apps.history.features import diagnosis_features
from mami_jax.apps.history.training import MODALITIES
from mami_jax.apps.history.diagnosis import CurrentOnly
from mami_jax.apps.privacy import objective
from mami_jax.apps.privacy.history_utility import HistoryClassifier, HistoryClassifierError
from mami_jax.config_files import load_config
from mami_jax.inference import params_fingerprint
from mami_jax.models.embed import embedding_and_pooled
from mami_jax.models.mami import MaMI


class DiagnosisKeeper:
    """The current-only classifier of history ``train`` output ``out_dir`` (trained with
    the history config ``app_config``) on ``member``'s features; refuses another model's."""

    def __init__(self, out_dir: str, app_config: str, member):
        try:
            self.classifier = HistoryClassifier(out_dir, load_config(app_config, kind="history"))
        except HistoryClassifierError as e:
            raise ValueError(str(e).replace("--history-classifier", "perturb.keep_diagnosis")) from e
        mine = params_fingerprint(member.params)
        if mine != self.classifier.fingerprint:
            raise ValueError(
                f"perturb.keep_diagnosis={out_dir}: its classifiers were trained on the features "
                f"of the model with fingerprint {self.classifier.fingerprint[:12]}..., not the "
                f"protecting model {member.embedder.source} ({mine[:12]}...): train them with "
                f"`python -m mami_jax.apps.history train --workdir` on that run")
        self.model_cfg = member.embedder.model_cfg
        self.kind = str(self.classifier.cfg.features)

    def standardiser(self, modality: str):
        """(mean, std, one-hot) of ``modality`` as ``history.training.apply_standardizer``."""
        norm = self.classifier.norm
        if modality not in norm:
            raise ValueError(f"perturb.keep_diagnosis={self.classifier.out_dir}: its classifier "
                             f"saw no {modality} training image")
        onehot = np.zeros(len(MODALITIES), np.float32)
        onehot[MODALITIES.index(modality)] = 1.0
        stats = norm[modality]
        return (np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32),
                onehot)

    def logits_fn(self, modality: str):
        """(params, model input (B, T, S, S, 3)) -> (B, classes) logits of the classifier."""
        mami = MaMI(self.model_cfg)
        head = CurrentOnly(self.classifier.hidden, self.classifier.num_classes)
        weights = jax.tree_util.tree_map(jnp.asarray, self.classifier.payload["current"])
        mean, std, onehot = self.standardiser(modality)
        kind = self.kind

        def logits(params, images):
            x = diagnosis_features(*embedding_and_pooled(mami, params, images), kind)
            z = jnp.concatenate([(x - mean) / std,
                                 jnp.broadcast_to(onehot, (x.shape[0], onehot.shape[0]))], -1)
            return head.apply({"params": weights}, z)
        return logits

    def change_fn(self, input_map, modality: str, cfg_perturb, views: int):
        """(params, x, offset, clean, key) -> (B,) ``keep_weight`` times the mean squared
        change of the logits of ``x``'s view from those of the same view of ``clean``
        (views=0: the plain images), what ``perturb.make_step`` adds to the objective."""
        logits = self.logits_fn(modality)
        weight = float(cfg_perturb.keep_weight)
        view_of = objective.make_view_fn(input_map, cfg_perturb, views)
        n = max(views, 1)

        def change(params, x, offset, clean, key):
            keys = jax.random.split(key, n)
            total = 0.0
            for v in range(n):
                a = logits(params, view_of(x, offset, keys[v]))
                b = jax.lax.stop_gradient(logits(params, view_of(clean, offset, keys[v])))
                total = total + jnp.mean(jnp.square(a - b), axis=-1)
            return weight * total / n
        return change
