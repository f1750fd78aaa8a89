"""The app settings are checked when configs/history.py is read and when a command starts
(``settings.check_settings``): an unknown value, or one that would do nothing
(``calibration=pairs`` under visit fusion), is refused by name."""

import pytest

from configs.history import get_config
from mami_jax.apps.history.settings import check_settings


@pytest.mark.parametrize("words, message", [
    ("calibration=bogus", "calibration='bogus' unknown; expected one of pairs, topk"),
    ("calibration=pairs", "calibration='pairs' has no effect with visit_fusion (the default): "
                          "visit scores are calibrated on the validation images' top-k visit "
                          "candidates; add visit_fusion=0 to calibrate single images on pairs"),
    ("target_far=1", "target_far=1.0: expected a false-accept rate in [0, 1)"),
    ("target_far=nan", "target_far=nan: expected a finite number"),
    ("hubness_k=-1", "index.hubness_k=-1: expected a whole number of at least 0"),
    ("train_history=future", "train_history='future' unknown; expected retrieved, true or both"),
    ("features=pixels", "features='pixels' unknown; expected one of backbone, embedding, both, "
                        "reader or teacher:NAME"),
    ("map_dim=-2", "classifier.map_dim=-2: expected a whole number of at least 0"),
    # Accepted before and found only after every image was embedded, or never:
    ("features=teacher:nonexistent", "features=teacher:nonexistent: unknown teacher "
     "'nonexistent'; known: ['anatomy', 'biomedclip', 'brainiac', 'ct_fm', 'dinov2_base', "
     "'efficientnet_lite0', 'rad_dino', 'random_tiny', 'retfound', 'uni']"),
    ("features=teacher:anatomy", "features=teacher:anatomy: a diagnosis backbone reads 2-D "
                                 "images, anatomy reads 'none' input"),
    ("map_dim=4,map_layer=bogus",
     "map_layer='bogus': expected one of patch_embed, ln_pre, last_block or block_<i>"),
    ("map_layer=block_1", "config word map_layer has no effect without the token-map input: "
                          "give map_dim=N (N > 0) too"),
    ("center=2", "config word center=2: expected center=0 or center=1"),
    ("records=yes", "config word records=yes: expected records=0 or records=1"),
    ("seed=-3", "classifier.seed=-3: expected a whole number of at least 0"),
    ("seed=x", "config word seed=x: expected a whole number"),
    ("target_far=q", "config word target_far=q: expected a number"),
    ("stage=0", "config word 'stage' is a switch and takes no value (got stage=0): leave the "
                "word out to turn it off"),
    ("seed=1,seed=2", "config word 'seed' is given twice; give it once"),
])
def test_a_bad_word_is_refused_when_the_file_is_read(words, message):
    with pytest.raises(ValueError) as e:
        get_config(words)
    assert str(e.value) == message


def test_the_documented_words_are_accepted():
    assert get_config("calibration=pairs,visit_fusion=0").calibration == "pairs"
    assert get_config("calibration=topk").calibration == "topk"
    get_config("stage,seed=1,features=teacher:efficientnet_lite0,records=1,hubness_k=0")


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(k=0), "k=0: expected a whole number of at least 1"),
    (lambda c: c.update(classes=("0", "0")),
     "classes=['0', '0']: expected two or more distinct values"),
    (lambda c: c.index.update(kind="tree"), "index.kind='tree' unknown; expected one of flat, "
                                            "ivf, hnsw"),
    (lambda c: c.classifier.update(steps=0), "classifier.steps=0: expected a whole number of at "
                                             "least 1"),
    (lambda c: c.classifier.update(history_dropout=1.0),
     "classifier.history_dropout=1.0: expected a probability in [0, 1)"),
    (lambda c: c.update(eval_split=""), "eval_split is empty: name a split of the manifest"),
    (lambda c: c.classifier.update(learning_rate=-1.0),
     "classifier.learning_rate=-1.0: expected a number > 0"),
    (lambda c: c.classifier.update(weight_decay=-1.0),
     "classifier.weight_decay=-1.0: expected a number >= 0"),
    (lambda c: c.reader.update(epochs=0), "reader.epochs=0: expected a whole number of at least 1"),
    (lambda c: c.reader.update(size=0), "reader.size=0: expected a whole number of at least 1"),
    (lambda c: c.reader.update(folds=1), "reader.folds=1: expected a whole number of at least 2"),
    (lambda c: c.reader.update(learning_rate=0.0),
     "reader.learning_rate=0.0: expected a number > 0"),
    (lambda c: c.reader.update(sizes={"pathology": 0}),
     "reader.sizes.pathology=0: expected a whole number of at least 1"),
    (lambda c: c.reader.update(widths=()),
     "reader.widths=(): expected one or more whole numbers of at least 1"),
    (lambda c: c.index.update(ivf_nprobe=0),
     "index.ivf_nprobe=0: expected a whole number of at least 1"),
    (lambda c: c.index.update(hnsw_m=0), "index.hnsw_m=0: expected a whole number of at least 2"),
    (lambda c: c.update(teacher_weights="/weights"),
     "teacher_weights='/weights' has no effect: features='backbone' reads no teacher "
     "(features=teacher:NAME does)"),
])
def test_a_setting_changed_after_reading_is_checked_again(change, message):
    """A hand-written config may set values the file's words never checked."""
    cfg = get_config()
    with cfg.unlocked():
        change(cfg)
    with pytest.raises(ValueError) as e:
        check_settings(cfg)
    assert str(e.value) == message
