"""PyTorch's default initialisation of `nn.Linear`, `nn.Conv2d` and `nn.ConvTranspose2d`.

torch initialises these layers with `kaiming_uniform_(weight, a=sqrt(5))` and the bias with
uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)). kaiming_uniform with a = sqrt(5) has gain
sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / fan_in) = 1/sqrt(fan_in): weights and biases share one
bound. `fan_in` is what torch's `_calculate_fan_in_and_fan_out` reads off the *torch* weight:
dimension 1 times the kernel area, i.e.

* Linear [out, in]:                 in
* Conv2d [out, in/groups, kh, kw]:  in/groups * kh * kw
* ConvTranspose2d [in, out/groups, kh, kw]: out/groups * kh * kw (dimension 1 is the output)

The new modules of DP-IQA (adapters, QFD, text adapter, student head) start from these in the
authors' code, so a run here starts where theirs starts.

Flax kernels are laid out [in, out] (Dense) and [kh, kw, in, out] (convolutions); `in_axis`
names the kernel axis torch counts as its fan-in axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Any
# Flax kernel axis torch treats as "fan in": the input axis, except for a transposed convolution.
DENSE_OR_CONV_IN_AXIS = -2
CONV_TRANSPOSE_IN_AXIS = -1


def torch_fan_in(kernel_shape: Sequence[int], in_axis: int = DENSE_OR_CONV_IN_AXIS) -> int:
    """torch's fan_in of the layer whose Flax kernel has `kernel_shape` (in/out the last two axes).

    The kernel area (every axis but the last two) times the size of `in_axis`.
    """
    if len(kernel_shape) < 2 or in_axis not in (-1, -2):
        raise ValueError(f"torch_fan_in: kernel shape {tuple(kernel_shape)} with in_axis "
                         f"{in_axis}; need >= 2 axes and in_axis -1 or -2")
    return math.prod(kernel_shape[:-2]) * kernel_shape[in_axis]


def torch_bound(fan_in: int) -> float:
    """The bound 1/sqrt(fan_in) of both the weights and the biases."""
    if fan_in <= 0:
        raise ValueError(f"torch_bound: fan_in must be positive, got {fan_in}")
    return 1.0 / math.sqrt(fan_in)


def torch_kernel_init(in_axis: int = DENSE_OR_CONV_IN_AXIS) -> Initializer:
    """kaiming_uniform(a=sqrt(5)) on a Flax kernel: uniform(+-1/sqrt(fan_in))."""
    out_axis = -1 if in_axis == DENSE_OR_CONV_IN_AXIS else -2
    # variance_scaling's uniform bound is sqrt(3 * scale / fan_in); scale 1/3 gives 1/sqrt(fan_in).
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis,
                                            out_axis=out_axis)


def torch_bias_init(fan_in: int) -> Initializer:
    """uniform(+-1/sqrt(fan_in)) with the fan_in of the layer's weight."""
    bound = torch_bound(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, in_features: int, *, name: str, use_bias: bool = True,
                dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> nn.Dense:
    """`nn.Dense` initialised as torch's `nn.Linear(in_features, features)`."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=torch_kernel_init(), bias_init=torch_bias_init(in_features),
                    name=name)
