"""A training config's model measured without weights: parameters per module, and the per-device
memory of its compiled update function (XLA's memory analysis).

Everything here works on abstract shapes (`jax.eval_shape`, `jax.ShapeDtypeStruct`): no weight is
read or initialised, so the full SD 1.5 teacher can be measured on a laptop, on fake CPU devices
standing in for a TPU mesh (`launch.inspect` sets them up).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import prompts as prompts_lib
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.train import models, optim, run, sharding, steps, tasks
from dpiqa_jax.train.state import Params, count_params

_BUNDLE_MANIFEST = "model.json"  # dpiqa_jax.bundle's manifest: kind, model_config, metadata


def _abstract_prompts(num_prompts: int, width: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((num_prompts, width), jnp.float32)


def _abstract_weights(params: Params, batch_stats: Params, prompts: Any) -> models.InitialWeights:
    return models.InitialWeights(params, batch_stats, prompts, "abstract shapes, no weights")


def _teacher_weights(module: Teacher, config: ml_collections.ConfigDict, num_prompts: int
                     ) -> models.InitialWeights:
    return _abstract_weights(models.abstract_teacher_params(module, config, num_prompts), {},
                             _abstract_prompts(num_prompts, module.config.text_dim))


def abstract_teacher(config: ml_collections.ConfigDict) -> tuple[Teacher, models.InitialWeights]:
    """The configured teacher with abstract parameters and K = 1485 prompts (5 for tiny)."""
    module = models.build_teacher(models.teacher_config(config), config)
    tiny = config.model.architecture == "tiny"
    return module, _teacher_weights(
        module, config, models.TINY_NUM_PROMPTS if tiny else prompts_lib.NUM_PROMPTS)


def _bundle_teacher_config(directory: str) -> TeacherConfig:
    """The architecture recorded in a bundle's model.json (its weights are not read)."""
    with open(os.path.join(directory, _BUNDLE_MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    return bundle_lib.model_config_from_dict("teacher", manifest["model_config"])


def distillation_teacher(config: ml_collections.ConfigDict) -> tuple[Teacher,
                                                                     models.InitialWeights]:
    """The student's teacher, abstract: the tiny teacher for 'random_tiny', the bundle's
    architecture when `teacher_checkpoint` is a bundle, else SD 1.5's."""
    num_prompts = prompts_lib.NUM_PROMPTS
    if config.teacher_checkpoint == models.RANDOM_TINY_TEACHER:
        teacher_config, num_prompts = models.TINY_TEACHER, models.TINY_NUM_PROMPTS
    elif config.teacher_checkpoint and bundle_lib.is_bundle(config.teacher_checkpoint):
        teacher_config = _bundle_teacher_config(config.teacher_checkpoint)
    else:
        teacher_config = TeacherConfig()
    module = models.build_frozen_teacher(teacher_config, config)
    return module, _teacher_weights(module, config, num_prompts)


def abstract_task(config: ml_collections.ConfigDict) -> tasks.Task:
    """The config's training task with abstract weights (see dpiqa_jax.train.tasks.Task)."""
    if config.kind == "teacher":
        _, weights = abstract_teacher(config)
        return tasks.teacher_task(config, weights)
    module = models.build_student(config)
    variables = models.abstract_student_variables(module, config)
    weights = _abstract_weights(variables["params"], variables["batch_stats"], None)
    teacher = None if config.teacher_maps_cache else distillation_teacher(config)
    return tasks.student_task(config, weights, teacher)


def parameter_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Parameters per module: the teacher's parts (launch.inspect's names), or the student."""
    if config.kind == "student":
        module = models.build_student(config)
        return {"student": count_params(models.abstract_student_variables(module, config)
                                        ["params"])}
    module, weights = abstract_teacher(config)
    return {name: count_params([weights.params[child] for child in children])
            for name, children in models.TEACHER_PARTS.items()}


def train_step_memory(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                      ) -> dict[str, float]:
    """Per-device memory (GiB) of the compiled update function of `config` on `mesh`.

    `peak` = arguments + outputs - aliased (donated) + temporaries, XLA's estimate of what one
    device holds at the update's high-water mark.
    """
    task = abstract_task(config)
    schedule = optim.learning_rate_schedule(config.optimizer.learning_rate, [], 1.0)
    optimizer = optim.make_optimizer(config.optimizer, schedule)
    state, frozen = run.task_layout(task, optimizer, mesh, config.fsdp_min_size)
    batch = run.batch_spec(config, task, mesh)
    compiled = steps.compile_update(
        task.make_update(optimizer, schedule), state, frozen, batch,
        state_shardings=jax.tree.map(lambda x: x.sharding, state),
        frozen_shardings=jax.tree.map(lambda x: x.sharding, frozen),
        batch_shardings=jax.tree.map(lambda x: x.sharding, batch),
        metrics_sharding=sharding.replicated(mesh), name=f"{config.kind} (abstract)")
    analysis = compiled.memory_analysis()
    sizes = {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "aliased": analysis.alias_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "code": analysis.generated_code_size_in_bytes,
    }
    sizes["peak"] = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                     + sizes["temporaries"])
    return {name: value / 2 ** 30 for name, value in sizes.items()}
