"""Casting the floating-point leaves of a pytree (weights, batches, abstract shapes)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Floating-point leaves (numpy, jax or abstract; bfloat16 included) cast to `dtype` where
    they are (a numpy leaf on the host); integer leaves and leaves already in `dtype` as they are.
    """
    dtype = jnp.dtype(dtype)

    def cast(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == dtype:
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
        return leaf.astype(dtype)
    return jax.tree.map(cast, tree)
