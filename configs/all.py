"""MaMI on every modality: the paper's recipe (docs/design.md; mami_jax/config.py).

    python -m mami_jax.main --config=configs/all.py --workdir=DIR
    python -m mami_jax.main --config=configs/all.py:runlocal --workdir=DIR   # 2-core CPU
    python -m mami_jax.main --config=configs/all.py:teachers=FEATURES --workdir=DIR
    python -m mami_jax.main --config=configs/all.py:runlocal,align --workdir=DIR
    python -m mami_jax.main --config=configs/all.py:runlocal,align=anatomy --workdir=DIR
    python -m mami_jax.main --config=configs/all.py:runlocal,finetune=FILE.pth --workdir=DIR

Difference alignment (docs/design.md#difference-alignment) is on exactly when teacher
features are configured: ``teachers=FEATURES`` reads the default medical bag
(``teachers.registry.MEDICAL_BAG``) stored in FEATURES by ``python -m teachers.extract``;
``align`` (with ``runlocal``) uses the embedded phantom teachers ``RUNLOCAL_TEACHERS``,
extracted into WORKDIR/teachers on the first run; ``align=NAME+NAME`` picks some of them
(the ablation in docs/experiments.md). Either adds ``loss.terms.align``.

``finetune=FILE`` starts from a MaMI checkpoint instead of CLIP: the authors' released .pth,
or a model of ours exported with ``python -m mami_jax.convert export-torch`` (whose file
carries its model config). The paper's recipe already fine-tunes (the model at a small rate,
the identity classifier and alignment head ten times faster); with ``runlocal``, which
otherwise trains from scratch, it fine-tunes the same way: the model at
``RUNLOCAL_FINETUNE_LR``, the classifier and alignment head ten times faster, as a model
built on a shared public backbone is trained (docs/privacy_experiments.md measures what that
means for protection).
"""

from configs import common_runlocal
from mami_jax.config import ALIGN_WEIGHT, base_config, parse_arg
from teachers import registry

#: runlocal: each modality's share of the training steps, by need and cost. CT learns
#: fastest, fundus and MRI need more steps, and a pathology step (80 px crops) costs
#: several 32 px steps.
RUNLOCAL_SOURCE_WEIGHTS = {"xray": 0.09, "ct": 0.125, "fundus": 0.285, "mri": 0.29,
                           "pathology": 0.21}

#: The teachers of ``runlocal,align``: need no download and run on a CPU. ``anatomy``
#: knows the phantoms' hidden identity parameters (what re-ID should recover);
#: ``efficientnet_lite0`` is a real ImageNet network, a generic visual prior.
#: ``random_tiny`` is left out: a random network's differences carry no prior.
RUNLOCAL_TEACHERS = ("anatomy", "efficientnet_lite0")

#: Weight of the "align" term in ``runlocal,align``. The paper's 0.01 fine-tunes CLIP,
#: whose features already carry a visual prior; trained from scratch on the phantoms the
#: prior is worth nothing at 0.01 or 0.1 (within the seed spread) and helps at 1.0, where
#: the term weighs about what the identity loss does (docs/experiments.md#alignment-ablation).
RUNLOCAL_ALIGN_WEIGHT = 1.0

#: Learning rate of ``runlocal,finetune=FILE``: a tenth of runlocal's from-scratch rate for
#: the model, the identity classifier and alignment head at ten times that (the paper's
#: multipliers).
RUNLOCAL_FINETUNE_LR = 1e-4
FINETUNE_HEAD_MULTIPLIER = 10.0

WORDS = ("runlocal", "align", "teachers", "finetune")
#: The words that need a value, with the example their error shows.
VALUES = {"teachers": "FEATURES_DIR", "finetune": "FILE.pth"}


def finetune_from(c, checkpoint, runlocal: bool) -> None:
    """Initialises every MaMI parameter from ``checkpoint`` (config.init.official_checkpoint);
    with ``runlocal``, trains at fine-tuning rates instead of from-scratch ones."""
    c.init.official_checkpoint = str(checkpoint)
    if runlocal:
        c.optim.learning_rate = RUNLOCAL_FINETUNE_LR
        c.optim.lr_multipliers.classifier = FINETUNE_HEAD_MULTIPLIER
        c.optim.lr_multipliers.align = FINETUNE_HEAD_MULTIPLIER


def use_teachers(c, names, features_dir: str = "", extract: bool = False,
                 weight: float = ALIGN_WEIGHT) -> None:
    """Configures the teacher features ``names`` (sizes from the registry) and adds the
    "align" term with ``weight`` (the paper's by default)."""
    t = c.data.teacher_features
    t.dir, t.extract = features_dir, extract
    t.teachers = tuple(names)
    t.dims = {n: registry.get_spec(n).feature_dim for n in names}
    with c.loss.terms.unlocked():
        c.loss.terms.align = weight
    if c.optim.lr_multipliers.classifier == 1.0:  # runlocal: everything from scratch
        c.optim.lr_multipliers.align = 1.0


def align_teachers(value) -> tuple[str, ...]:
    """The teachers of the word ``align``: all of ``RUNLOCAL_TEACHERS``, or those named
    in ``align=NAME+NAME``."""
    if value is True:
        return RUNLOCAL_TEACHERS
    names = tuple(n.strip() for n in str(value).split("+") if n.strip())
    unknown = [n for n in names if n not in RUNLOCAL_TEACHERS]
    if not names or unknown:
        raise ValueError(f"config word align={value!r}: name teachers among "
                         f"{'+'.join(RUNLOCAL_TEACHERS)}, joined by '+'")
    return names


def get_config(arg=None):
    words = parse_arg(arg, WORDS, VALUES, optional_values=("align",))
    c = base_config()
    if words.get("runlocal"):
        common_runlocal.apply(c)
        for modality, weight in RUNLOCAL_SOURCE_WEIGHTS.items():
            c.data.modalities[modality].source_weight = weight
    if words.get("align"):
        if not words.get("runlocal"):
            raise ValueError("config word 'align' uses the embedded phantom teachers: combine it "
                             "with 'runlocal', or give teachers=FEATURES_DIR")
        use_teachers(c, align_teachers(words["align"]), extract=True,
                     weight=RUNLOCAL_ALIGN_WEIGHT)
    if words.get("teachers"):
        if words.get("align"):
            raise ValueError("config words 'align' and 'teachers=' are exclusive")
        use_teachers(c, registry.MEDICAL_BAG, features_dir=str(words["teachers"]))
    if words.get("finetune"):
        finetune_from(c, words["finetune"], runlocal=bool(words.get("runlocal")))
    return c
