"""The common-weakness ensemble step (``perturb.ensemble_update = "common_weakness"``).

Averaging the members' gradients (``perturb.make_step``) finds a change that lowers the
ensemble's mean score, which may sit in a narrow valley of each member that a model never
optimised against does not share. The Common Weakness Attack (CWA; Chen et al., ICLR 2024,
"Rethinking model ensemble in transfer-based adversarial attacks") looks instead for a
change that is (i) flat, so that nearby models also score low there, and (ii) a common
minimum of the members, where their gradients agree. Each outer step:

1. a sharpness step: the change is first moved ``reverse_size`` *up* the ensemble's
   gradient (towards the worst nearby point, as sharpness-aware minimisation does);
2. from there each member in turn takes a step of ``inner_size`` down its own gradient,
   with a momentum over the members (the members' steps chain, so a direction only one
   member likes is undone by the next);
3. the change from where the step began to where the members left it is the outer step's
   gradient: accumulated with momentum and applied as ``step_size`` along it.

Every move is inside the budget (``perturb.project``) and keeps the image in [0, 1], and
each gradient is smoothed (``perturb.smooth``) and masked as the plain step's is. A step
costs two gradients per member (the plain step: one). With one member, no sharpness step
and no momentum it is the plain step (tests/test_privacy_common_weakness.py).
"""

from __future__ import annotations

import jax

from mami_jax.apps.privacy.perturb import (check_norm, direction, ensemble_grad,
                                           make_member_grad, mean_abs_normalised, moved,
                                           smooth_gradient)
from mami_jax.apps.privacy.references import member_refs

UPDATES = ("average", "common_weakness")


def check_update(update: str) -> None:
    if update not in UPDATES:
        raise ValueError(f"perturb.ensemble_update={update!r}: expected one of {UPDATES}")


def make_step(member_score, norm: str, epsilon: float, step_size: float, momentum: float,
              smooth: float = 0.0, reverse_size: float = 0.006, inner_size: float = 0.006,
              inner_momentum: float = 0.5):
    """A step with ``perturb.make_step``'s signature and state: (params list, x0, delta,
    velocity, mask, offset, ``References.arrays()``, key) -> (delta, velocity, ensemble
    score before the step). ``momentum`` is the outer momentum, ``inner_momentum`` that
    over the members within a step (restarted every step)."""
    check_norm(norm)
    for name, value in (("smooth", smooth), ("cwa_reverse_size", reverse_size),
                        ("cwa_inner_size", inner_size)):
        if not float(value) >= 0:
            raise ValueError(f"perturb.{name}={value!r}: must be >= 0")
    member_grad = make_member_grad(member_score)

    @jax.jit
    def reverse(g, delta, mask, x0):
        g = smooth_gradient(g, smooth) * mask
        return moved(delta, reverse_size * direction(g, norm) * mask, x0, norm, epsilon)

    @jax.jit
    def inner(g, delta, velocity, mask, x0):
        velocity = inner_momentum * velocity + mean_abs_normalised(smooth_gradient(g, smooth) * mask)
        return moved(delta, -inner_size * direction(velocity, norm) * mask, x0, norm,
                     epsilon), velocity

    @jax.jit
    def outer(start, end, velocity, mask, x0):
        velocity = momentum * velocity + mean_abs_normalised(end - start)
        return moved(start, step_size * direction(velocity, norm) * mask, x0, norm,
                     epsilon), velocity

    def step(params_list, x0, delta, velocity, mask, offset, ref_arrays, key):
        key, sub = jax.random.split(key)
        g, score = ensemble_grad(member_grad, params_list, x0, delta, offset, ref_arrays, sub)
        probe = reverse(g, delta, mask, x0)
        inner_velocity = jax.numpy.zeros_like(delta)
        keys = jax.random.split(key, len(params_list))
        for m, params in enumerate(params_list):
            g, _ = member_grad(probe, params, x0, offset, member_refs(ref_arrays, m), keys[m])
            probe, inner_velocity = inner(g, probe, inner_velocity, mask, x0)
        delta, velocity = outer(delta, probe, velocity, mask, x0)
        return delta, velocity, score
    return step
