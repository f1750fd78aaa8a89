"""The disease course of a phantom patient: a Markov chain with a per-patient rate.

One disease track per patient, shared by all the patient's modalities (each
modality shows it in its own way: opacities on X-ray, retinopathy on fundus,
a growing nodule on CT, atrophy and lesions on MRI, inflammation on
pathology). Stages are 0 (healthy) to 3 (advanced).

Why a Markov chain with persistence: the history-augmented diagnosis
application needs labels whose value at a visit is predictable from earlier
visits. Here a stage rarely goes back (regression probability 0.05), and
each patient has their own progression hazard (0 for about 40% of patients,
who stay healthy). The visible signs of stage 1 are faint and sometimes
absent (renderers scale them by a per-visit random severity), so an image
alone is an imperfect witness and the previous visits add information.
"""

from __future__ import annotations

import numpy as np

N_STAGES = 4
P_NEVER = 0.4           # share of patients with zero hazard
HAZARD_RANGE = (0.25, 0.7)
INITIAL_PROGRESSOR = (0.5, 0.35, 0.15, 0.0)  # stage at the first visit, for progressors
P_REGRESS = 0.05


def disease_course(rng: np.random.Generator, visits: int) -> list[int]:
    """Stage (0..3) at each of ``visits`` visits for one patient."""
    if visits < 1:
        raise ValueError(f"visits must be >= 1, got {visits}")
    never = rng.random() < P_NEVER
    hazard = 0.0 if never else rng.uniform(*HAZARD_RANGE)
    stage = 0 if never else int(rng.choice(N_STAGES, p=INITIAL_PROGRESSOR))
    course = [stage]
    for _ in range(visits - 1):
        u = rng.random()
        if u < hazard:
            stage = min(N_STAGES - 1, stage + 1)
        elif u < hazard + P_REGRESS and stage > 0:
            stage -= 1
        course.append(stage)
    return course


def severity(rng: np.random.Generator, stage: int, stage1_visible: float | None = None,
             signs_visible: float | None = None) -> float:
    """How strongly this visit's image shows the stage: 0 for healthy, noisy otherwise.

    Stage 1 is drawn from [0, 1] (faint: at these image sizes hardly any reader sees it),
    stage 3 from [2, 3]. With ``stage1_visible`` = p, a stage-1 visit instead shows the
    disease as strongly as stage 2 ([1, 2)) with probability p and not at all otherwise:
    an intermittent sign (an effusion that depends on positioning, a lesion between
    slices), the case where an earlier visit that showed it tells what the current image
    hides. ``signs_visible`` = p does the same at every stage: a diseased visit shows its
    stage's strength (stage 1 at stage 2's) with probability p and nothing otherwise, the
    case where a patient's history decides most diagnoses (a persistent disease seen at
    any earlier visit is most likely still there). Either way one uniform number is
    drawn, so every later draw of the visit (the renderer's) is the same with and without
    them.
    """
    if stage <= 0:
        return 0.0
    u = float(rng.uniform(0.0, 1.0))
    if signs_visible is not None:
        p = float(signs_visible)
        return float(max(stage, 2) - 1 + u / p) if u < p else 0.0
    if stage == 1 and stage1_visible is not None:
        p = float(stage1_visible)
        return 1.0 + u / p if u < p else 0.0
    return float(stage - 1 + u)
