"""What training needs of each model kind: the teacher's and the student's `Task`.

A Task bundles the model's starting weights (split into trained and frozen), its update and
predict functions, what a batch needs beyond the pipeline's fields, and what goes into the
finished bundle. `dpiqa_jax.train.run` drives either kind through the same loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from dpiqa_jax.models.teacher import Teacher
from dpiqa_jax.primitives.dtypes import cast_floating
from dpiqa_jax.train import models, steps
from dpiqa_jax.train.state import Params, merge_params, partition_params
from dpiqa_jax.train.teacher_maps import TeacherMapCache


@dataclasses.dataclass
class Task:
    """What the loop needs of one model kind.

    Attributes:
      kind: 'teacher' or 'student'.
      model_config: the model's config dataclass (written into the bundle).
      source: where the initial weights came from (logged once).
      trainable, batch_stats, frozen: host trees (see dpiqa_jax.train.steps for `frozen`).
      make_update: (optimizer, schedule) -> the update function.
      predict: (params, batch_stats, frozen, images) -> scores [B].
      prepare_batch: adds what the update needs beyond the pipeline's fields (cached maps).
      bundle_contents: (params, batch_stats) -> (variables, prompts) of the finished model.
    """

    kind: str
    model_config: Any
    source: str
    trainable: Params
    batch_stats: Params
    frozen: Params
    make_update: Callable[[optax.GradientTransformation, optax.Schedule], steps.UpdateFn]
    predict: Callable[..., jax.Array]
    prepare_batch: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    bundle_contents: Callable[[Params, Params], tuple[Params, np.ndarray | None]]


def teacher_task(config: ml_collections.ConfigDict,
                 weights: models.InitialWeights | None = None) -> Task:
    """The teacher task; `weights` (possibly abstract) replace the initial-weight search."""
    module = models.build_teacher(models.teacher_config(config), config)
    weights = weights or models.initial_teacher_weights(module, config)
    trainable, frozen_params = partition_params(weights.params,
                                                models.teacher_frozen_patterns(config))
    frozen = cast_floating({"params": frozen_params, "prompts": weights.prompts},
                           config.frozen_dtype)
    predict = steps.make_teacher_predict(module, seed=config.seed)

    def make_update(optimizer, schedule):
        return steps.make_teacher_update(module, optimizer, schedule, seed=config.seed,
                                         remat_policy=config.remat_policy,
                                         skip_nonfinite=config.skip_nonfinite)

    def bundle_contents(params, batch_stats):
        del batch_stats
        return {"params": merge_params(params, frozen_params)}, weights.prompts

    return Task("teacher", module.config, weights.source,
                cast_floating(trainable, config.param_dtype), {}, frozen, make_update,
                lambda params, batch_stats, frozen, images: predict(params, frozen, images),
                _batch_as_is, bundle_contents)


def _batch_as_is(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch


def _check_map_shape(teacher_shape: tuple[int, ...], config: ml_collections.ConfigDict,
                     where: str) -> None:
    s = config.student
    if tuple(teacher_shape) != (s.map_size, s.map_size, s.map_channels):
        raise ValueError(f"{where} gives maps of shape {tuple(teacher_shape)}; the student's map "
                         f"is {(s.map_size, s.map_size, s.map_channels)}")


def _cached_maps(cache: TeacherMapCache, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The cached teacher maps [B, m, m, c] of the batch's real images; zeros for padding."""
    real = np.asarray(batch["mask"], bool)
    maps = np.zeros((len(real),) + tuple(cache.map_shape), np.float32)
    if real.any():
        maps[real] = cache.lookup(batch["image"][real])
    return maps


def student_task(config: ml_collections.ConfigDict,
                 weights: models.InitialWeights | None = None,
                 teacher: tuple[Teacher, models.InitialWeights] | None = None) -> Task:
    """The student task; `weights` and `teacher` (possibly abstract) replace the initial-weight
    search of the student and of the teacher it learns from."""
    module = models.build_student(config)
    weights = weights or models.initial_student_weights(module, config)
    source = weights.source
    if not config.loss.map_weight:
        teacher, frozen = None, {}
        source += "; no teacher (loss.map_weight is 0: the student learns from the labels alone)"
        prepare_batch = _batch_as_is
    elif config.teacher_maps_cache:
        if config.data.hflip or config.data.random_crop:
            raise ValueError("config.teacher_maps_cache holds maps of unaugmented images; set "
                             "data.hflip=False and data.random_crop=False, or drop the cache")
        cache = TeacherMapCache(config.teacher_maps_cache)
        _check_map_shape(cache.map_shape, config, f"teacher-map cache {cache.path}")
        teacher, frozen = None, {}
        source += f"; teacher maps from the cache {cache.path} ({len(cache)} images)"

        def prepare_batch(batch):
            return {**batch, "teacher_map": _cached_maps(cache, batch)}
    else:
        teacher, teacher_weights = teacher or models.initial_teacher_for_distillation(config)
        qfd = teacher.config.qfd
        _check_map_shape((qfd.map_size, qfd.map_size, qfd.score_channels[-1]), config,
                         "the teacher")
        frozen = cast_floating({"teacher": teacher_weights.params,
                                "prompts": teacher_weights.prompts}, config.frozen_dtype)
        source += f"; teacher maps on the fly from the {teacher_weights.source}"
        prepare_batch = _batch_as_is

    predict = steps.make_student_predict(module)

    def make_update(optimizer, schedule):
        return steps.make_student_update(
            module, optimizer, schedule, seed=config.seed, teacher=teacher,
            score_weight=config.loss.score_weight, map_weight=config.loss.map_weight,
            remat_policy=config.remat_policy, skip_nonfinite=config.skip_nonfinite)

    return Task("student", module.config, source,
                cast_floating(weights.params, config.param_dtype), weights.batch_stats, frozen,
                make_update,
                lambda params, batch_stats, frozen, images: predict(params, batch_stats, images),
                prepare_batch,
                lambda params, batch_stats: ({"params": params, "batch_stats": batch_stats},
                                             None))


def build_task(config: ml_collections.ConfigDict) -> Task:
    if config.kind not in ("teacher", "student"):
        raise ValueError(f"config.kind={config.kind!r}; expected 'teacher' or 'student'")
    return teacher_task(config) if config.kind == "teacher" else student_task(config)
