"""The training state and the split of a model's parameters into trained and frozen parts.

Only `TrainState.params` is differentiated and seen by the optimizer; frozen weights (the VAE,
the prompt embeddings, the UNet when frozen, the teacher during distillation) travel beside the
state as a separate, never-donated argument, so they get neither gradients nor Adam moments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpiqa_jax import bundle

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
    """Everything a training step changes, and exactly what a checkpoint holds.

    Attributes:
      step: int32 scalar, optimizer steps taken.
      params: the trainable parameters (fp32 master copy).
      opt_state: optimizer state of `params`.
      batch_stats: BatchNorm running statistics (the student's; `{}` for the teacher).
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    batch_stats: Params


def create_train_state(params: Params, batch_stats: Params,
                       optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), batch_stats=batch_stats)


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_name(path: Sequence[Any]) -> str:
    """A pytree key path as `unet/down_blocks_0/conv1/kernel`."""
    return "/".join(_key_name(k) for k in path)


def flat_paths(tree: Any) -> dict[str, Any]:
    """`{'a/b/kernel': leaf, ...}` for every leaf of a pytree."""
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def partition_params(params: Params, frozen_patterns: Sequence[str]) -> tuple[Params, Params]:
    """Splits params into (trainable, frozen): a leaf is frozen when its path (`vae/...`) matches
    one of the regexes `frozen_patterns` (searched, not fully matched)."""
    compiled = [re.compile(p) for p in frozen_patterns]
    trainable, frozen = {}, {}
    for name, leaf in flat_paths(params).items():
        target = frozen if any(p.search(name) for p in compiled) else trainable
        target[name] = leaf
    unused = [p.pattern for p in compiled if not any(p.search(n) for n in frozen)]
    if unused:
        raise ValueError(f"frozen patterns {unused} match no parameter; top-level names are "
                         f"{sorted(params)}")
    return bundle.unflatten_variables(trainable), bundle.unflatten_variables(frozen)


def merge_params(trainable: Params, frozen: Params) -> Params:
    """The inverse of `partition_params`; a path present in both is an error."""
    flat_trainable, flat_frozen = flat_paths(trainable), flat_paths(frozen)
    overlap = sorted(set(flat_trainable) & set(flat_frozen))
    if overlap:
        raise ValueError(f"parameters both trainable and frozen: {overlap[:10]}")
    return bundle.unflatten_variables({**flat_frozen, **flat_trainable})


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts floating leaves (numpy, jax or abstract) to `dtype`; integer leaves are kept."""
    def cast(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, jnp.dtype(dtype), sharding=leaf.sharding)
        if isinstance(leaf, np.ndarray):
            return leaf.astype(dtype)
        return jnp.asarray(leaf, dtype)
    return jax.tree.map(cast, tree)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
