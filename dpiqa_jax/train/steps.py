"""The jitted update functions of the teacher and the student, and their evaluation functions.

An update function maps (state, frozen, batch) -> (state, metrics):

* `state` (`TrainState`, donated) holds what trains;
* `frozen` holds what does not: `{"params": ..., "prompts": [K, D]}` for the teacher (the VAE,
  and the UNet with `freeze_unet`), `{"teacher": ..., "prompts": ...}` for the student. It is
  never differentiated, so it has no gradients and no optimizer state;
* `batch` holds global arrays: `image` [B, H, W, 3] in [0, 1], `mos_normalized` [B], `mask` [B]
  (False for the padding of an epoch's last partial batch; without it every image is real), and
  for a student with a map cache `teacher_map` [B, m, m, c]. Losses average over the real images
  only, as torch's `MSELoss` on the smaller last batch does. (The student's BatchNorm batch
  statistics of that one step per epoch still include the padding images.)

Randomness comes from `fold_in(key(seed), step)`, so a resumed run draws the same numbers as an
uninterrupted one: the student's stochastic depth uses that key; the teacher's posterior sample
(`latent="sample"`) folds in each image's fingerprint as well (`per_image_keys`), so every image
gets fresh noise at every step, and at test (key(seed), no step) an image's noise is fixed by its
pixels alone, whatever batch it is scored in.

A step whose loss or gradient is not finite reports `finite = False`; with `skip_nonfinite` it
also leaves the state unchanged (the step counter still advances, so the data and the random
numbers move on).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging

from dpiqa_jax.models.student import Student
from dpiqa_jax.models.teacher import LATENT_RNG, Teacher
from dpiqa_jax.primitives.dtypes import cast_floating
from dpiqa_jax.train.state import Params, TrainState, merge_params

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
UpdateFn = Callable[[TrainState, Any, Batch], tuple[TrainState, Metrics]]
DROPOUT_RNG = "dropout"
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "nothing_saveable", "everything_saveable")


def mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """torch `MSELoss()` (mean over every element), computed in float32."""
    return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def masked_mse(prediction: jax.Array, target: jax.Array, mask: jax.Array | None) -> jax.Array:
    """torch `MSELoss()` over the real images of a padded batch: [B, ...] with mask [B] (None:
    every image is real).

    Every image has the same number of elements, so the mean over the real images' elements is
    the mean of their per-image means.
    """
    if mask is None:
        return mse(prediction, target)
    per_image = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    per_image = per_image.reshape(per_image.shape[0], -1).mean(axis=1)
    weights = mask.astype(jnp.float32)
    return jnp.sum(per_image * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def with_remat(fn: Callable, policy: str) -> Callable:
    """`fn` under `jax.checkpoint` with the named policy ('none' leaves it alone)."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r}; expected one of {REMAT_POLICIES}")
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, policy))


def compute_copy(params: Params, dtype: Any) -> Params:
    """The fp32 master parameters cast to the compute dtype before the forward pass.

    The modules would cast each kernel anyway; casting the FSDP shards first halves what the
    all-gathers move and what the gathered copies occupy (bf16 instead of fp32). The gradient
    flows back through the cast to the master copy.
    """
    return cast_floating(params, dtype)


def step_key(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


def image_fingerprints(images: jax.Array) -> jax.Array:
    """A uint32 hash of each image's exact pixels: images [B, H, W, C] -> [B].

    Each pixel's bit pattern times an odd multiplier of its position, summed modulo 2^32:
    integer arithmetic, so the value does not depend on the reduction order or the device.
    """
    bits = jax.lax.bitcast_convert_type(images.astype(jnp.float32), jnp.uint32)
    bits = bits.reshape(images.shape[0], -1)
    multipliers = jnp.arange(bits.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761) | 1
    return jnp.sum(bits * multipliers, axis=1, dtype=jnp.uint32)


def per_image_keys(key: jax.Array, images: jax.Array) -> jax.Array:
    """One key per image, `fold_in(key, fingerprint(image))`: [B] keys."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, image_fingerprints(images))


def encode_teacher_latents(module: Teacher, params: Params, images: jax.Array,
                           key: jax.Array) -> jax.Array:
    """The teacher's VAE latents [B, h, w, 4] of images [B, H, W, 3].

    With `latent="sample"` every image draws its posterior noise from its own key
    (`per_image_keys(key, images)`), so its latent does not depend on its batch neighbours.
    """
    if module.config.latent != "sample":
        return module.apply({"params": params}, images, method=Teacher.encode_latents)

    def encode_one(image: jax.Array, image_key: jax.Array) -> jax.Array:
        return module.apply({"params": params}, image[None], method=Teacher.encode_latents,
                            rngs={LATENT_RNG: image_key})[0]

    return jax.vmap(encode_one)(images, per_image_keys(key, images))


def teacher_outputs(module: Teacher, params: Params, prompts: jax.Array, images: jax.Array,
                    key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(score [B], quality map [B, m, m, c]) of the whole teacher; `params` all of them."""
    latents = encode_teacher_latents(module, params, images, key)
    return module.apply({"params": params}, latents, images, prompts,
                        method=Teacher.score_latents)


def apply_gradients(state: TrainState, grads: Params, batch_stats: Params, loss: jax.Array,
                    optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    skip_nonfinite: bool) -> tuple[TrainState, Metrics]:
    """The optimizer update shared by both models, with the non-finite check."""
    grad_norm = optax.tree.norm(grads)
    # One reduction instead of one per tensor: the norm is finite iff every gradient is (or a
    # gradient is so large that its square overflows, which is as fatal).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updated = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, batch_stats=batch_stats)
    if skip_nonfinite:
        kept = state.replace(step=state.step + 1)
        updated = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "learning_rate": schedule(state.step), "finite": finite}
    return updated, metrics


# --------------------------------------------------------------------------- teacher


def make_teacher_update(module: Teacher, optimizer: optax.GradientTransformation,
                        schedule: optax.Schedule, *, seed: int, remat_policy: str = "none",
                        skip_nonfinite: bool = False) -> UpdateFn:
    """Teacher step: MSE(score, mos_normalized); the VAE runs outside the differentiated part."""

    def update(state: TrainState, frozen: Params, batch: Batch) -> tuple[TrainState, Metrics]:
        latents = encode_teacher_latents(module, frozen["params"], batch["image"],
                                         step_key(seed, state.step))

        def loss_fn(params: Params) -> jax.Array:
            params = merge_params(compute_copy(params, module.dtype), frozen["params"])
            score, _ = module.apply({"params": params}, latents, batch["image"],
                                    frozen["prompts"], method=Teacher.score_latents)
            return masked_mse(score, batch["mos_normalized"], batch.get("mask"))

        loss, grads = jax.value_and_grad(with_remat(loss_fn, remat_policy))(state.params)
        return apply_gradients(state, grads, state.batch_stats, loss, optimizer, schedule,
                               skip_nonfinite)

    return update


def make_teacher_predict(module: Teacher, *, seed: int = 0) -> Callable[..., jax.Array]:
    """(params, frozen, images) -> scores [B]; `params` the trained part. A posterior sample
    draws per image from key(seed) (`encode_teacher_latents`)."""

    def predict(params: Params, frozen: Params, images: jax.Array) -> jax.Array:
        score, _ = teacher_outputs(module, merge_params(params, frozen["params"]),
                                   frozen["prompts"], images, jax.random.key(seed))
        return score.astype(jnp.float32)

    return predict


def make_teacher_maps(module: Teacher, *, seed: int = 0) -> Callable[..., jax.Array]:
    """(teacher params, prompts, images[, key]) -> quality maps [B, m, m, c] float32; a
    posterior sample draws per image from `key` (default key(seed))."""

    def maps(params: Params, prompts: jax.Array, images: jax.Array,
             key: jax.Array | None = None) -> jax.Array:
        key = jax.random.key(seed) if key is None else key
        _, quality_map = teacher_outputs(module, params, prompts, images, key)
        return quality_map.astype(jnp.float32)

    return maps


# --------------------------------------------------------------------------- student


def make_student_update(module: Student, optimizer: optax.GradientTransformation,
                        schedule: optax.Schedule, *, seed: int,
                        teacher: Teacher | None, score_weight: float = 1.0,
                        map_weight: float = 1.0, remat_policy: str = "none",
                        skip_nonfinite: bool = False) -> UpdateFn:
    """Student step: score_weight * MSE(score, mos) + map_weight * MSE(map, teacher map).

    With `teacher` given, its maps are computed here from `frozen["teacher"]` (frozen, no
    gradient); with `teacher=None` they come in the batch (`teacher_map`, from the cache). With
    `map_weight` 0 there is no map term: no teacher map is needed or computed.
    """
    teacher_maps = None if teacher is None else make_teacher_maps(teacher, seed=seed)

    def update(state: TrainState, frozen: Params, batch: Batch) -> tuple[TrainState, Metrics]:
        key = step_key(seed, state.step)
        if not map_weight:
            target_map = None
        elif teacher_maps is None:
            target_map = batch["teacher_map"]
        else:
            target_map = teacher_maps(frozen["teacher"], frozen["prompts"], batch["image"], key)

        mask = batch.get("mask")

        def loss_fn(params: Params) -> tuple[jax.Array, tuple[Params, Metrics]]:
            (score, quality_map), mutated = module.apply(
                {"params": compute_copy(params, module.dtype), "batch_stats": state.batch_stats},
                batch["image"], train=True, mask=mask, mutable=["batch_stats"],
                rngs={DROPOUT_RNG: key})
            terms = {"score_loss": masked_mse(score, batch["mos_normalized"], mask)}
            loss = score_weight * terms["score_loss"]
            if target_map is not None:
                terms["map_loss"] = masked_mse(quality_map, target_map, mask)
                loss = loss + map_weight * terms["map_loss"]
            return loss, (mutated["batch_stats"], terms)

        (loss, (batch_stats, terms)), grads = jax.value_and_grad(
            with_remat(loss_fn, remat_policy), has_aux=True)(state.params)
        state, metrics = apply_gradients(state, grads, batch_stats, loss, optimizer, schedule,
                                         skip_nonfinite)
        return state, {**metrics, **terms}

    return update


def make_student_predict(module: Student) -> Callable[..., jax.Array]:
    """(params, batch_stats, images) -> scores [B], inference mode (running BN statistics)."""

    def predict(params: Params, batch_stats: Params, images: jax.Array) -> jax.Array:
        score, _ = module.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=False)
        return score.astype(jnp.float32)

    return predict


# --------------------------------------------------------------------------- compilation


def compile_update(update: UpdateFn, state: Any, frozen: Any, batch: Any, *,
                   state_shardings: Any, frozen_shardings: Any, batch_shardings: Any,
                   metrics_sharding: Any, name: str) -> Any:
    """jit with donated state, lowered and compiled ahead of time; logs the compile time.

    `state`, `frozen` and `batch` may be abstract (`jax.ShapeDtypeStruct`).
    """
    jitted = jax.jit(update, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                     out_shardings=(state_shardings, metrics_sharding), donate_argnums=0)
    start = time.perf_counter()
    lowered = jitted.lower(state, frozen, batch)
    compiled = lowered.compile()
    logging.info("%s update compiled ahead of time in %.1f s", name, time.perf_counter() - start)
    return compiled
