"""Privacy protection settings (mami_jax.apps.privacy; docs/privacy.md).

    python -m mami_jax.apps.privacy protect --config=configs/privacy.py:transfer=RUN_A+RUN_B ...

``experiment`` names the experiment config (preprocessing and model config) the re-ID
models are read with; empty, the ``--workdir`` run's own (``RUN/config.json``, which
training writes, or the one a file exported from a run carries; the paper's
``configs/all.py`` for any other model file). ``runlocal`` sets it to
``configs/all.py:runlocal``, e.g. for a quick-start model's converter folder.
Words: ``runlocal``, ``inpaint`` (region removal only), ``both`` (inpaint, then perturb),
``deform`` (a smooth displacement field instead of an added change: apps/privacy/deform.py),
``transfer=DIR+DIR@STEP`` (optimise against these re-ID runs as well as ``--workdir``'s
model, at the transfer budget and with smoothed gradients, for protection that holds
against re-ID models it never saw;
docs/privacy_experiments.md measured it with three runs of other seeds trained like the
``--workdir`` run, and better with one of them replaced by a run on more patients: the
ensemble must hold the kinds of model an attacker would train; one member of each kind,
fine-tunes of each public backbone an attacker may start from and runs from scratch,
protected CT, MRI, fundus and pathology against models of all those kinds),
``xray_transfer=DIR+DIR`` (the X-rays' own ensemble, ``perturb.modality_ensemble``: two
fine-tunes of every public backbone an attacker may start from and the backbones
themselves, and nothing else, their gradients balanced: ``perturb.modality_member_weighting``),
``xray_visible`` (X-rays get a 21.5 dB budget instead of 30: the smallest at which the
`transfer` recipe's X-ray protection held against every held-out and retrained model
measured; the change is visible), ``rank`` (every
modality minimises how far each image still ranks its own patient above every other
patient, per member, instead of its match score: objective.rank_margins; the ``transfer``
recipe ranks X-rays alone).
"""

import ml_collections

from mami_jax.config import parse_arg

WORDS = ("runlocal", "inpaint", "both", "deform", "transfer", "xray_transfer", "xray_visible",
         "rank")

#: The words that need a value, with the example their error shows.
VALUES = {"transfer": "RUN_A+RUN_B@1000", "xray_transfer": "FINETUNE_A+FINETUNE_B+BACKBONE.pth"}
#: At most one of these: each names what is done to an image (``method``).
METHOD_WORDS = ("inpaint", "both", "deform")
#: Words that shape the perturbation search, which region removal alone does not run: it
#: scores cues with --workdir's model only and has no budget.
SEARCH_WORDS = ("transfer", "xray_transfer", "xray_visible", "rank")


def _workdirs(words, word: str, what: str) -> tuple:
    """The re-ID runs a ``WORD=DIR+DIR@STEP`` word names; ValueError when it names none."""
    members = tuple(m for m in str(words[word]).split("+") if m)
    if not members:
        raise ValueError(f"configs/privacy.py: {word} needs {what}, e.g. {word}={VALUES[word]} "
                         "(re-ID runs of the same experiment config as --workdir's)")
    return members


def _check_combination(words) -> None:
    """ValueError for words that contradict each other: two methods (the last one won), or
    region removal with a word of the perturbation search (it would do nothing)."""
    methods = [w for w in METHOD_WORDS if w in words]
    if len(methods) > 1:
        raise ValueError(f"configs/privacy.py: {' and '.join(methods)} each choose the method; "
                         "give one (both inpaints, then perturbs)")
    unused = [w for w in SEARCH_WORDS if w in words]
    if "inpaint" in words and unused:
        raise ValueError(f"configs/privacy.py: inpaint runs no perturbation search, so "
                         f"{' and '.join(unused)} would do nothing (it removes the strongest cue "
                         "regions of --workdir's model, with no budget); the word both "
                         "inpaints, then perturbs")


def get_config(arg=None):
    words = parse_arg(arg, WORDS, VALUES)
    _check_combination(words)
    c = ml_collections.ConfigDict()
    c.experiment = "configs/all.py:runlocal" if words.get("runlocal") else ""
    # "perturb": bounded perturbation (a); "inpaint": removal of the strongest identity
    # regions (b); "both": (b) then (a) on the inpainted image; "noise": Gaussian noise
    # of the whole perturbation budget, aimed at nothing (the control a protection's cost
    # and effect are compared with); "deform": a smooth displacement field inside the
    # same budget (the anatomy moved, not a pattern added).
    c.method = "perturb"
    if words.get("inpaint"):
        c.method = "inpaint"
    if words.get("both"):
        c.method = "both"
    if words.get("deform"):
        c.method = "deform"
    c.batch_size = 32          # images optimised together (one modality and shape at a time)
    # protect reads this many manifest rows at a time: their pixels (every slice group of a
    # series) are held in memory, the references are embedded once for all rows. Each
    # batch's random key comes from its chunk, so changing this changes a run's output.
    c.read_chunk = 256
    # A CT or MRI series: protect every slice, one group of slices at a time (each group one
    # slice per segment, as the model reads them: 16 slices read as 2 are 8 groups, 8 times
    # the work), so that no model reading other slices sees them unchanged. False: only
    # the slices evaluation reads.
    c.every_slice = True
    c.seed = 0
    # Header data of the protected copies: "keep" (every DICOM data element and the NIfTI
    # header as the input had them, for a site that de-identifies headers with its own
    # tool) or "remove" (people, institutions, devices and dates emptied, private elements
    # removed, UIDs replaced consistently: apps/privacy/header_identity.py).
    c.metadata = ml_collections.ConfigDict()
    c.metadata.identity = "keep"

    p = c.perturb = ml_collections.ConfigDict()
    # "linf": every pixel moves at most epsilon (unit intensity, [0, 1]); "l2": the
    # root-mean-square change per pixel is at most epsilon (||delta||_2 <= epsilon sqrt(N)).
    # Either way PSNR >= 20 log10(1 / epsilon) before quantisation: 0.028 -> 31.1 dB.
    # On the phantoms an l2 budget lowers the match score far more than the same PSNR
    # spent as linf (docs/privacy_experiments.md).
    p.norm = "l2"
    p.epsilon = 0.028
    # Per-modality budgets that replace epsilon for that modality's images, e.g.
    # {"ct": 0.02}; an empty dict: epsilon everywhere.
    p.modality_epsilon = ml_collections.ConfigDict()
    p.steps = 40
    p.step_size = 0.006            # per step, in the norm's own units
    p.momentum = 0.5               # MI-FGSM: accumulated normalised gradients (transfer)
    # Expectation over transformations, per step and image: random shifts of up to
    # ``shift`` native pixels (wrapped), Gaussian noise of std ``noise``, and for
    # modalities evaluated over the symmetries of the square a random one of them.
    # Off by default: optimised under random 1-pixel shifts and noise 0.005, the change
    # hardly lowered the score of the unshifted image (X-ray 0.701 -> 0.697,
    # docs/privacy_experiments.md).
    p.views = 1
    p.shift = 0
    p.noise = 0.0
    # Input diversity (DI-FGSM, Xie et al. 2019): each view is first zoomed by a random
    # factor in [1, 1 + scale] about a random point (bilinear). 0: off.
    p.scale = 0.0
    # Translation-invariant gradients (TI-FGSM, Dong et al. 2019): each step's gradient
    # is smoothed with a Gaussian of this sigma (native pixels) before the update, so the
    # change is low-frequency. 0: off.
    p.smooth = 0.0
    # Extra re-ID models (workdirs of the same experiment config, latest checkpoint, or
    # "WORKDIR@STEP") optimised against together with --workdir's: transfer to unseen
    # models improves with the ensemble.
    p.ensemble = ()
    # Per-modality ensembles that replace ``ensemble`` for that modality's images (the
    # --workdir model stays first), e.g. {"xray": ("RUN_F11", "RUN_F12")} or "A+B": X-rays
    # want only fine-tunes of the backbones an attacker may start from, CT, MRI, fundus and
    # pathology one member of each kind (docs/privacy_experiments.md, "One ensemble per modality").
    # An empty dict: ``ensemble`` everywhere.
    p.modality_ensemble = ml_collections.ConfigDict()
    # How the members' gradients are combined (perturb.ensemble_grad): "mean" (the
    # gradient of the mean score), "balanced" (each member's scaled to the same size
    # first) or "hardest" (balanced, weighted by a softmax of the members' scores at
    # hardest_temperature: the members that still match steer most).
    p.member_weighting = "mean"
    # Per-modality weightings that replace ``member_weighting`` for that modality's images,
    # e.g. {"xray": "balanced"}; an empty dict: ``member_weighting`` everywhere.
    p.modality_member_weighting = ml_collections.ConfigDict()
    p.hardest_temperature = 0.05
    # How a step uses the members: "average" their gradients (weighted as above), or
    # "common_weakness" (CWA, apps/privacy/common_weakness.py): a sharpness step of
    # cwa_reverse_size up the ensemble's gradient, then one step of cwa_inner_size per
    # member down its own gradient in turn (momentum cwa_inner_momentum over the members),
    # and the way travelled is the step's gradient. Two gradients per member per step.
    p.ensemble_update = "average"
    p.cwa_reverse_size = 0.006
    p.cwa_inner_size = 0.006
    p.cwa_inner_momentum = 0.5
    # The loss pushes the image's embedding away from its original and from the
    # patient's other images (mean cosine similarity), weight ``own_weight`` on the original.
    p.own_weight = 1.0
    # What protection minimises: "similarity", the match score above, or "rank": per
    # member and image, a soft maximum (at rank_temperature) of the similarities to the
    # patient's other images minus that over every image of the modality's other
    # patients, floored at -rank_floor, so that an image already matched to an impostor by
    # that margin under a member stops spending budget on it (objective.rank_margins).
    # Temperature 0.1 and floor 1.0 did best of those swept on the X-rays
    # (docs/privacy_experiments.md).
    p.objective = "similarity"
    # Per-modality objectives that replace ``objective`` for that modality's images, e.g.
    # {"xray": "rank"}; an empty dict: ``objective`` everywhere.
    p.modality_objective = ml_collections.ConfigDict()
    p.rank_temperature = 0.1
    p.rank_floor = 1.0
    # Impostors each image is ranked against, per member the modality's other patients'
    # images most similar to its original: the soft maximum is decided by the nearest few,
    # and all of them would not fit in memory for a large manifest.
    p.rank_impostors = 128
    # Impersonation (as Fawkes' target class): minus target_weight times the similarity to
    # the mean embedding of another patient of the modality, the one farthest from the
    # image's own ("farthest") or the closest impostor ("nearest"). 0: off (untargeted).
    p.target_weight = 0.0
    p.target = "farthest"
    # Feature disruption: plus feature_weight times the similarity of one backbone layer's
    # patch tokens (patch_embed, ln_pre, block_<i>, last_block) to the original image's
    # (position by position): intermediate features are shared more between independently
    # trained models than the embedding is. 0: off.
    p.feature_weight = 0.0
    p.feature_layer = "block_1"
    # Keeping the diagnosis: a history `train` output (DIR with classifiers.msgpack) whose
    # current-only classifier was trained on --workdir's model, or "DIR+DIR+..." with one
    # per re-ID model in order (--workdir's, then the ensemble's); each step also minimises
    # keep_weight times the mean squared change of their logits from the original's,
    # averaged over them (apps/privacy/diagnosis_keep.py). "": off.
    p.keep_diagnosis = ""
    p.keep_diagnosis_config = "configs/history.py"
    p.keep_weight = 1.0
    if words.get("transfer"):
        members = _workdirs(words, "transfer", "the ensemble's workdirs")
        # Transfer reaches models like the members: with a member trained on 640 other
        # patients instead of a third quick-start run, a held-out run on other patients fell
        # from 0.07-0.12 to 0.00-0.03 Rank-1 on CT, MRI and fundus (docs/privacy_experiments.md,
        # "Stronger held-out models").
        p.ensemble = members
        # The PSNR >= 30 dB goal allows epsilon up to 0.0316; 0.03 leaves room for the
        # files' rounding (8-bit: rms 0.0011 more).
        p.epsilon = 0.03
        # Gradients smoothed with sigma 1 pixel (TI-FGSM): on the validation X-rays it lowered
        # every held-out model's Rank-1 at the same PSNR; 2 did as well, 4 did worse
        # (docs/privacy_experiments.md).
        p.smooth = 1.0
        # Fundus at 0.0185 (35 dB): at 0.03 the lesions' few pixels were lost to the change
        # (a diagnosis reader lost 12 %, as much as noise of that budget costs); 0.0185 kept
        # that reader within 5 % and every held-out model within twice chance on the test
        # fundus images (docs/privacy_experiments.md, "A reader of every modality, and the
        # fundus budget").
        p.modality_epsilon = ml_collections.ConfigDict({"fundus": 0.0185})
        # X-rays ranked rather than matched: with four members their held-out Rank-1 fell
        # 0.30 / 0.24 -> 0.21 / 0.17 at the same budget, the diagnosis reader within 1 %.
        # The rest keep the match score: ranking moved fundus and pathology images towards
        # other patients' lesions (the reader lost 9-10 % and 3.4-3.6 % against 1-2 % and
        # 1.7-1.9 %), and on all four every held-out model was within twice chance either
        # way (docs/privacy_experiments.md, "Ranking on every modality").
        p.modality_objective = ml_collections.ConfigDict({"xray": "rank"})
    if words.get("xray_transfer"):
        members = _workdirs(words, "xray_transfer", "the X-rays' ensemble")
        if not words.get("transfer"):
            raise ValueError("configs/privacy.py: xray_transfer gives the transfer recipe's "
                             "X-rays their own ensemble; name the recipe's with transfer=... too")
        # X-rays against fine-tunes only: their identity needs half the 30 dB budget even on
        # the model the change is fitted to, so every member of another kind dilutes it. Name
        # two fine-tunes of each backbone an attacker may start from (--workdir's among them)
        # and the backbones themselves (a released .pth or import-official folder will do):
        # without the backbones two builds of the stand-in backbones kept fine-tunes at
        # 0.033-0.087 and the backbones at 0.065-0.120 (docs/privacy_experiments.md, "One
        # ensemble per modality", "A second backbone, and the backbones themselves as members").
        p.modality_ensemble["xray"] = members
        # ... and every member's gradient scaled to the same size before they are averaged:
        # with the plain mean a third build of backbone A left backbone B's side
        # under-protected (a held-out fine-tune of B 0.076, B itself, a member, 0.087);
        # balanced, every held-out fine-tune of three builds fell to 0.022-0.054, attackers
        # fine-tuned on such X-rays to 0.054-0.098, the diagnosis reader within 4.4 %
        # (docs/privacy_experiments.md, "Three builds, and balanced members").
        p.modality_member_weighting["xray"] = "balanced"
    if words.get("xray_visible"):
        # X-ray identity lives in the anatomy's outline, which no 30 dB change (additive,
        # deformation or learned; any ensemble or weighting tried) hid from re-ID models it
        # was not optimised against: they kept Rank-1 0.27-0.42 (up to 16 members). At 0.084
        # (21.5 dB, SSIM 0.74) the four-member recipe brought held-out models to 0.000-0.022
        # and a model retrained on such X-rays to 0.011, with the diagnosis reader within
        # 2.7 % (docs/privacy_experiments.md, "What budget X-ray transfer needs"); ranked, as the
        # recipe now does, held-out 0.000-0.011, retrained 0.000, reader within 1.8 %
        # ("Ranking on every modality").
        p.modality_epsilon["xray"] = 0.084

    if words.get("rank"):
        # Rank-1 is decided by the best impostor, not by the mean similarity: on the test
        # X-rays, at the same budget, the held-out models' Rank-1 fell by 5-11 of 92 queries
        # at every ensemble size (twelve members: 0.23 / 0.20 -> 0.12 / 0.13), on the
        # validation X-rays (6 patients) the protecting model's 0.625 -> 0.125
        # (docs/privacy_experiments.md,
        # "Ranking instead of similarity"). Every modality ranked, fundus included.
        p.objective = "rank"

    d = c.deform = ml_collections.ConfigDict()
    # method "deform": a smooth displacement field resamples the image (apps/privacy/deform.py),
    # inside perturb.norm / perturb.epsilon's budget.
    d.grid = 8                     # control points per side (the field's smoothness)
    d.max_shift = 3.0              # native pixels, per control point
    d.steps = 40
    d.step_size = 0.3              # native pixels (RMS over the control points) per step
    d.momentum = 0.5

    q = c.cues = ml_collections.ConfigDict()
    q.occlusion_patch = 8          # native pixels
    q.occlusion_stride = 4
    q.smooth = 1.5                 # Gaussian sigma (native pixels) of the gradient map
    q.max_images = 16              # images the cues command maps (first rows of the split)

    r = c.inpaint = ml_collections.ConfigDict()
    r.region_fraction = 0.05       # share of pixels (per slice) replaced
    r.iterations = 60              # diffusion steps filling the removed region
    r.cue = "gradient"             # which cue map picks the region: gradient or occlusion
    return c
