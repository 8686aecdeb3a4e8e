"""Optimizer and learning-rate schedule from a config.

The authors' recipe is torch Adam with `MultiStepLR(milestones, gamma=0.2)` stepped once per
epoch; `milestone_steps` turns epochs into optimizer steps so the decay lands on the first step of
the milestone epoch, as it does there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from dpiqa_jax.train.state import flat_paths


class OptimizerCoverageError(ValueError):
    """The optimizer state does not hold moments for exactly the trainable parameters."""


def milestone_steps(schedule: ml_collections.ConfigDict, steps_per_epoch: int) -> list[int]:
    """Decay points in optimizer steps: `schedule.milestone_steps`, else epochs x steps/epoch."""
    if schedule.milestone_steps:
        if schedule.milestone_epochs:
            raise ValueError("set schedule.milestone_steps or schedule.milestone_epochs, not both")
        steps = [int(s) for s in schedule.milestone_steps]
    else:
        steps = [int(round(e * steps_per_epoch)) for e in schedule.milestone_epochs]
    if any(s <= 0 for s in steps) or sorted(set(steps)) != steps:
        raise ValueError(f"milestones must be increasing positive steps, got {steps}")
    return steps


def learning_rate_schedule(base_lr: float, milestones: Sequence[int], factor: float
                           ) -> optax.Schedule:
    """`base_lr * factor ** (number of milestones <= step)`, step counted from 0."""
    return optax.piecewise_constant_schedule(base_lr, {m: factor for m in milestones})


def _decay_mask(params: Any) -> Any:
    """Weight decay on kernels and embeddings only, never on biases, norms or `gamma`."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(optimizer: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
    """Adam or AdamW (optax), preceded by global-norm clipping when `optimizer.clip_norm > 0`."""
    if optimizer.name == "adam":
        if optimizer.weight_decay:
            raise ValueError("optimizer.name='adam' has no weight decay; use 'adamw' for "
                             f"weight_decay={optimizer.weight_decay}")
        update = optax.adam(schedule, b1=optimizer.b1, b2=optimizer.b2, eps=optimizer.eps)
    elif optimizer.name == "adamw":
        update = optax.adamw(schedule, b1=optimizer.b1, b2=optimizer.b2, eps=optimizer.eps,
                             weight_decay=optimizer.weight_decay, mask=_decay_mask)
    else:
        raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {optimizer.name!r}")
    if optimizer.clip_norm:
        return optax.chain(optax.clip_by_global_norm(optimizer.clip_norm), update)
    return update


def check_optimizer_covers(params: Any, opt_state: Any) -> None:
    """Raises unless the optimizer keeps Adam moments for every trainable parameter and no others.

    Works on real or abstract (`jax.eval_shape`) trees. Catches a parameter silently left out of
    training (masked) as well as a frozen tensor that slipped into the optimizer.
    """
    moments = optax.tree_utils.tree_get_all_with_path(opt_state, "mu")
    if len(moments) != 1:
        raise OptimizerCoverageError(
            f"expected one Adam state in the optimizer state, found {len(moments)}")
    mu = moments[0][1]
    expected = {path: leaf.shape for path, leaf in flat_paths(params).items()}
    # A masked-out parameter holds an empty MaskedNode, which has no leaves and drops out here.
    covered = {path: leaf.shape for path, leaf in flat_paths(mu).items()}
    uncovered = sorted(set(expected) - set(covered))
    unexpected = sorted(set(covered) - set(expected))
    misshaped = sorted(p for p in set(expected) & set(covered) if expected[p] != covered[p])
    if uncovered or unexpected or misshaped:
        raise OptimizerCoverageError(
            f"optimizer state does not match the trainable parameters: not covered {uncovered[:10]}"
            f", unexpected {unexpected[:10]}, mis-shaped {misshaped[:10]}")
