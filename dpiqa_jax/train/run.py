"""The training loop of the teacher and the student, from one CPU to a TPU pod.

    train(config, workdir) -> WORKDIR/best_model     (launch/train.py)
    train_and_evaluate(config, split, workdir)       (launch/run_splits.py, one split of many)

A run: build the mesh; open the train / validation / test parts; pick the initial weights
(`dpiqa_jax.train.models`), split them into trained and frozen, shard both; resume from the
latest checkpoint in WORKDIR if there is one; compile the update function ahead of time; train,
logging every `log_every_steps`, evaluating once per `eval_every_epochs` epochs (or every
`eval_every_steps` when set) and checkpointing every `checkpoint_every_steps` (and at the end).

`config.protocol='ours'` (default): the evaluation is on the validation part; finally the
checkpoint with the best validation SRCC is scored on the test part (WORKDIR/test_eval/:
metrics.json, predictions.csv, scatter.png) and written as a bundle (WORKDIR/best_model/) for
scoring and export.

`config.protocol='authors'`: the validation part joins training (their 80 / 20 split) and the
test part is evaluated at every evaluation; the checkpoints with the best test PLCC and the best
test SRCC are written as bundles (WORKDIR/best_test_plcc_model/, best_test_srcc_model/) and the
values, labelled `selected_on_test`, to WORKDIR/test_selection.json
(dpiqa_jax.eval.test_selection). The run's model is the best-PLCC one, which they distil from.

Workdir: metrics.jsonl, tensorboard/, checkpoints/, then test_eval/ and best_model/ (ours) or
test_selection.json, best_test_plcc_model/ and best_test_srcc_model/ (authors').

The console (dpiqa_jax.train.console) shows each setup phase with its duration, a line per logged
step and per evaluation. The workdir and checkpoint settings are checked, and a resumed run's
config compared with the saved one, before any model is built (`open_checkpoints`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax.data import pipeline, sources
from dpiqa_jax.eval import metrics as metrics_lib
from dpiqa_jax.eval import protocol
from dpiqa_jax.eval import test_selection
from dpiqa_jax.train import checkpoint as checkpoint_lib
from dpiqa_jax.train import console, inputs, models, optim, sharding, steps
from dpiqa_jax.train import workdir as workdir_lib
from dpiqa_jax.train.tasks import Task, build_task
from dpiqa_jax.train import logging as train_logging
from dpiqa_jax.train.state import Params, TrainState, create_train_state

BEST_MODEL_DIR = "best_model"
TEST_EVAL_DIR = "test_eval"
# The heads predict MOS / 100 (mos_normalized); a bundle's score is that x 100, on [0, 100].
MOS_SCALE = 100.0


class NonFiniteError(FloatingPointError):
    """A training step produced a non-finite loss or gradient."""


def config_for_split(config: ml_collections.ConfigDict, split: Any) -> ml_collections.ConfigDict:
    """A copy of `config` reading `split` (a `dpiqa_jax.eval.multi_split.SplitRef`)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.dataset = split.dataset
    config.data.split_file = os.fspath(split.split_file)
    config.data.split = split.split
    config.lock()
    return config


# --------------------------------------------------------------------------- schedule


def training_length(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps); an epoch is ceil(N / global batch) steps, the last partial
    batch kept (padded and masked), as the authors' DataLoader does."""
    steps_per_epoch = pipeline.steps_per_epoch(num_train, config.batch_size)
    total = config.total_steps if config.total_steps > 0 else config.num_epochs * steps_per_epoch
    return steps_per_epoch, total


def eval_interval(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Steps between evaluations: `eval_every_steps` when > 0, else `eval_every_epochs` epochs."""
    if config.eval_every_steps > 0:
        return config.eval_every_steps
    if config.eval_every_epochs <= 0:
        raise ValueError("set config.eval_every_epochs (> 0) or config.eval_every_steps (> 0); "
                         f"got {config.eval_every_epochs} and {config.eval_every_steps}")
    return config.eval_every_epochs * steps_per_epoch


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Placed:
    """The run's arrays on the mesh, and their shardings."""

    mesh: Mesh
    state: TrainState
    state_shardings: Any
    frozen: Params
    frozen_shardings: Any


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)


def task_layout(task: Task, optimizer: optax.GradientTransformation, mesh: Mesh,
                min_size: int) -> tuple[TrainState, Params]:
    """Abstract train state and frozen tree of `task`, with their shardings on `mesh`."""
    state = jax.eval_shape(lambda p, b: create_train_state(p, b, optimizer), task.trainable,
                           task.batch_stats)
    frozen = jax.eval_shape(lambda tree: tree, task.frozen)
    return (abstract_like(state, sharding.fsdp_shardings(state, mesh, min_size)),
            abstract_like(frozen, sharding.fsdp_shardings(frozen, mesh, min_size)))


def _shardings(abstract: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, abstract)


def place_task(task: Task, optimizer: optax.GradientTransformation, mesh: Mesh,
               min_size: int) -> Placed:
    """Shards the frozen weights and creates the optimizer state on the mesh, already sharded."""
    abstract_state, abstract_frozen = task_layout(task, optimizer, mesh, min_size)
    state_shardings = _shardings(abstract_state)
    params = sharding.place(task.trainable, state_shardings.params)
    batch_stats = sharding.place(task.batch_stats, state_shardings.batch_stats)
    state = jax.jit(lambda p, b: create_train_state(p, b, optimizer),
                    out_shardings=state_shardings)(params, batch_stats)
    frozen_shardings = _shardings(abstract_frozen)
    return Placed(mesh, state, state_shardings, sharding.place(task.frozen, frozen_shardings),
                  frozen_shardings)


def batch_spec(config: ml_collections.ConfigDict, task: Task, mesh: Mesh) -> dict[str, Any]:
    """Abstract global batch (what the update is compiled for)."""
    shard = sharding.batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct(models.image_shape(config, config.batch_size),
                                           np.float32, sharding=shard),
             "mos_normalized": jax.ShapeDtypeStruct((config.batch_size,), np.float32,
                                                    sharding=shard),
             "mask": jax.ShapeDtypeStruct((config.batch_size,), np.bool_, sharding=shard)}
    if task.kind == "student" and config.teacher_maps_cache:
        s = config.student
        batch["teacher_map"] = jax.ShapeDtypeStruct(
            (config.batch_size, s.map_size, s.map_size, s.map_channels), np.float32,
            sharding=shard)
    return batch


def make_predict_fn(task: Task, placed: Placed) -> Callable[[TrainState], protocol.PredictFn]:
    """state -> predict_fn(local images [b, H, W, 3]) -> local scores [b] (protocol's API)."""
    shard = sharding.batch_sharding(placed.mesh)
    jitted = jax.jit(task.predict,
                     in_shardings=(placed.state_shardings.params,
                                   placed.state_shardings.batch_stats, placed.frozen_shardings,
                                   shard),
                     out_shardings=shard)

    def for_state(state: TrainState) -> protocol.PredictFn:
        def predict_fn(local_images: np.ndarray) -> np.ndarray:
            images = pipeline.make_global_batch({"image": local_images}, placed.mesh,
                                                sharding.BATCH_AXES)["image"]
            scores = jitted(state.params, state.batch_stats, placed.frozen, images)
            local = multihost_utils.global_array_to_host_local_array(
                scores, placed.mesh, PartitionSpec(sharding.BATCH_AXES))
            return np.asarray(local)
        return predict_fn

    return for_state


def evaluate_part(predict_fn: protocol.PredictFn, source: sources.IqaSource,
                  config: ml_collections.ConfigDict) -> protocol.EvalResult:
    return protocol.evaluate(predict_fn, source, inputs.image_config(config),
                             inputs.eval_batch_size(config),
                             jax.process_index(), jax.process_count(),
                             num_threads=config.data.num_threads, progress=False)


def validation_metrics(predict_fn: protocol.PredictFn, source: sources.IqaSource,
                       config: ml_collections.ConfigDict) -> dict[str, float]:
    """The val_* metrics. A non-finite prediction stops the run, or with config.skip_nonfinite
    makes val_srcc and val_plcc NaN, which ranks the checkpoint below every validated one."""
    predictions = protocol.predict_source(
        predict_fn, source, inputs.image_config(config), inputs.eval_batch_size(config),
        jax.process_index(), jax.process_count(), num_threads=config.data.num_threads,
        progress=False)
    nonfinite = int(np.sum(~np.isfinite(predictions.predictions)))
    if not nonfinite:
        metrics, _ = metrics_lib.compute_metrics_and_fit(predictions.predictions, predictions.mos)
        return _prefixed("val", metrics)
    message = f"validation: {nonfinite} of {len(predictions.predictions)} predictions not finite"
    if not config.skip_nonfinite:
        raise NonFiniteError(message + "; training stopped. config.skip_nonfinite=True ranks "
                             "such a checkpoint last instead")
    logging.warning("%s; this checkpoint ranks last (config.skip_nonfinite)", message)
    return {"val_srcc": math.nan, "val_plcc": math.nan,
            "val_nonfinite_predictions": float(nonfinite)}


def _check_step_finite(step: int, metrics: Mapping[str, jax.Array], skip: bool) -> None:
    if bool(metrics["finite"]):
        return
    message = f"step {step}: the loss or a gradient is not finite (loss={float(metrics['loss'])})"
    if not skip:
        raise NonFiniteError(message + "; training stopped. config.skip_nonfinite=True skips "
                             "such steps instead")
    logging.warning("%s; update skipped (config.skip_nonfinite)", message)


def _host_metrics(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in metrics.items()
            if name != "finite"}


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": value for name, value in metrics.items()}


def _gather_to_host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    sharding.check_global_batch_size(config.batch_size, mesh)
    sharding.check_global_batch_size(config.data.eval_batch_size, mesh)


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def compile_task_update(config: ml_collections.ConfigDict, task: Task, placed: Placed,
                        optimizer: optax.GradientTransformation, schedule: optax.Schedule) -> Any:
    """The task's update function, compiled ahead of time for the placed state and the batch."""
    abstract_batch = batch_spec(config, task, placed.mesh)
    return steps.compile_update(
        task.make_update(optimizer, schedule), placed.state, placed.frozen, abstract_batch,
        state_shardings=placed.state_shardings, frozen_shardings=placed.frozen_shardings,
        batch_shardings=_shardings(abstract_batch),
        metrics_sharding=sharding.replicated(placed.mesh), name=task.kind)


def next_global_batch(task: Task, iterator: Any, mesh: Mesh) -> dict[str, jax.Array]:
    """This process's next batch, completed by the task and assembled into global arrays."""
    return pipeline.make_global_batch(task.prepare_batch(next(iterator)), mesh,
                                      sharding.BATCH_AXES)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """best_model_dir: the bundle of the best checkpoint; best_step: its step; final_state: the
    state after the last step (sharded on the run's mesh)."""

    best_model_dir: str
    best_step: int
    final_state: TrainState


@dataclasses.dataclass
class _Run:
    """One training run's fixed parts, shared by the loop and the final evaluation."""

    config: ml_collections.ConfigDict
    workdir: str
    task: Task
    placed: Placed
    parts: dict[str, sources.IqaSource]
    checkpointer: checkpoint_lib.Checkpointer
    writer: train_logging.MetricWriter
    predict_for: Callable[[TrainState], protocol.PredictFn]
    abstract_state: TrainState
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    # The authors' protocol's bests on the test part; None under ours.
    selection: test_selection.SelectionOnTest | None
    best: console.BestSoFar


def open_checkpoints(config: ml_collections.ConfigDict, workdir: str,
                     allow_config_change: bool = False) -> checkpoint_lib.Checkpointer:
    """The run's checkpointer, after the checks that need no model: the workdir can be written,
    keep_checkpoints >= 1, and a checkpoint to resume was saved with the same run config.

    Raises workdir_lib.RunSettingsError naming what is wrong (the differing config fields on
    resume, unless `allow_config_change`, which logs them instead).
    """
    workdir = workdir_lib.check_run_settings(workdir, config.keep_checkpoints)
    checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is None:
        return checkpointer
    differences = checkpoint_lib.config_differences(checkpointer.saved_config(latest),
                                                    config_json(config))
    if differences and not allow_config_change:
        checkpointer.close()
        raise workdir_lib.RunSettingsError(
            f"{workdir} holds a run with another config (step {latest}); differing fields: "
            f"{', '.join(differences)}. Use the saved values, another workdir, or allow the "
            "change explicitly (launch.train --allow_config_change)")
    if differences:
        logging.warning("resuming with changed config fields (allowed): %s",
                        ", ".join(differences))
    return checkpointer


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: Sequence[jax.Device] | None = None,
          allow_config_change: bool = False) -> TrainResult:
    """Trains (or resumes) the run in `workdir` on `devices` (default: all of them).

    A workdir that holds checkpoints is resumed only with the config it was saved with, apart
    from checkpoint_lib.RUN_NEUTRAL_FIELDS, unless `allow_config_change`.
    """
    console.quiet_library_logs()
    checkpointer = open_checkpoints(config, workdir, allow_config_change)
    try:
        return _train_with(config, os.path.dirname(checkpointer.directory), devices,
                           checkpointer)
    finally:
        checkpointer.close()


def _train_with(config: ml_collections.ConfigDict, workdir: str,
                devices: Sequence[jax.Device] | None,
                checkpointer: checkpoint_lib.Checkpointer) -> TrainResult:
    with console.phase("setup: device mesh"):
        mesh = sharding.make_mesh(config.mesh, devices)
        check_batch_sizes(config, mesh)
    logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
    with console.phase("setup: opening the data"):
        parts = inputs.protocol_parts(inputs.open_parts(config.data), config.protocol)
    logging.info("data (%s protocol): %s", config.protocol,
                 {part: len(source) for part, source in parts.items()})
    steps_per_epoch, total_steps = training_length(config, len(parts["train"]))
    eval_every = eval_interval(config, steps_per_epoch)
    logging.info("training the %s (%s) for %d steps of %d images (%d steps per epoch, evaluation "
                 "every %d steps) in %s", config.kind, config.variant, total_steps,
                 config.batch_size, steps_per_epoch, eval_every, workdir)
    schedule = optim.learning_rate_schedule(
        config.optimizer.learning_rate, optim.milestone_steps(config.schedule, steps_per_epoch),
        config.schedule.factor)
    optimizer = optim.make_optimizer(config.optimizer, schedule)

    with console.phase(f"setup: building the {config.kind} and its initial weights"):
        task = build_task(config)
    logging.info("initial weights: %s", task.source)
    with console.phase("setup: placing weights and optimizer state on the mesh"):
        placed = place_task(task, optimizer, mesh, config.fsdp_min_size)
        optim.check_optimizer_covers(placed.state.params, placed.state.opt_state)
    abstract_state = abstract_like(placed.state, placed.state_shardings)

    iterator = pipeline.train_iterator(parts["train"], inputs.pipeline_config(config),
                                       jax.process_index(), jax.process_count())
    state = placed.state
    latest = checkpointer.latest_step()
    if latest is not None:
        with console.phase(f"setup: resuming from {checkpointer.directory} step {latest} "
                           "(trained state and data position; frozen weights as above)"):
            state = checkpointer.restore(latest, abstract_state, iterator)
    writer = train_logging.MetricWriter(workdir, total_steps=total_steps,
                                        initial_step=int(state.step),
                                        tensorboard=config.tensorboard,
                                        progress_bar=config.progress_bar)
    selection = (test_selection.SelectionOnTest(workdir) if config.protocol == "authors"
                 else None)
    session = _Run(config, workdir, task, placed, parts, checkpointer, writer,
                   make_predict_fn(task, placed), abstract_state, total_steps, steps_per_epoch,
                   eval_every, selection, console.BestSoFar(writer.history))
    try:
        if int(state.step) < total_steps:
            with console.phase(f"compiling the {task.kind} update (minutes on a CPU)"):
                update = compile_task_update(config, task, placed, optimizer, schedule)
            state = _train_steps(session, update, state, iterator)
        finish = _finish if selection is None else _finish_on_test
        best_dir, best_step = finish(session)
        return TrainResult(best_dir, best_step, state)
    finally:
        writer.close()


def _train_steps(session: _Run, update: Any, state: TrainState, iterator: Any) -> TrainState:
    """Runs the steps from `state.step` to the end; returns the final state."""
    config, mesh = session.config, session.placed.mesh
    step = int(state.step)
    throughput = train_logging.Throughput()
    pending: tuple[int, Mapping[str, jax.Array]] | None = None
    logged_step = step
    eta = console.EtaClock(step, session.total_steps)
    while step < session.total_steps:
        batch = next_global_batch(session.task, iterator, mesh)
        with jax.transfer_guard("disallow"):
            state, metrics = update(state, session.placed.frozen, batch)
        # The previous step's flag is read only now, so the host never waits for the device.
        if pending is not None:
            _check_step_finite(*pending, config.skip_nonfinite)
        step += 1
        pending = (step, metrics)
        throughput.add(config.batch_size)
        last = step == session.total_steps
        log_due = step % config.log_every_steps == 0 or last
        eval_due = step % session.eval_every == 0 or last
        save_due = step % config.checkpoint_every_steps == 0 or eval_due
        if log_due or save_due:
            _check_step_finite(*pending, config.skip_nonfinite)
            pending = None
        if log_due:
            rate = throughput.rate()
            host_metrics = _host_metrics(metrics)
            session.writer.write(step, {**host_metrics, "images_per_second": rate})
            session.writer.advance(step - logged_step, rate)
            session.writer.say(console.step_line(step, session.total_steps, host_metrics, rate,
                                                 eta.remaining_seconds(step)))
            logged_step = step
        val_metrics = None
        if eval_due and session.selection is None:
            val_metrics = validation_metrics(session.predict_for(state), session.parts["val"],
                                             config)
            session.writer.write(step, val_metrics)
            session.best.update(step, val_metrics["val_srcc"])
            session.writer.say(console.eval_line(step, val_metrics, session.best))
        elif eval_due:
            _select_on_test(session, state, step)
        if save_due:
            session.checkpointer.save(step, state, iterator, config_json(config), val_metrics)
        if eval_due or save_due:
            throughput.restart()
    return state


def _finish(session: _Run) -> tuple[str, int]:
    """Scores the best checkpoint on the test part and writes it as the run's bundle."""
    config, checkpointer = session.config, session.checkpointer
    checkpointer.wait()
    best = checkpointer.best_step()
    if best is None:
        raise RuntimeError(f"{checkpointer.directory} has no validated checkpoint to select")
    state = checkpointer.restore(best, session.abstract_state)
    logging.info("best checkpoint by validation SRCC: step %d", best)
    with console.phase(f"scoring step {best} on the test part"):
        result = evaluate_part(session.predict_for(state), session.parts["test"], config)
    logging.info("test (step %d): SRCC %.4f PLCC %.4f", best, result.metrics["srcc"],
                 result.metrics["plcc"])
    session.writer.write(session.total_steps,
                         {"best_step": best, **_prefixed("test", result.metrics)})
    if jax.process_index() == 0:
        protocol.write_evaluation(result, os.path.join(session.workdir, TEST_EVAL_DIR),
                                  title=f"{config.data.dataset} {config.data.split} test",
                                  extra_info={"step": best, "part": "test"})
    best_dir = os.path.join(session.workdir, BEST_MODEL_DIR)
    _write_bundle(session, state, best_dir, {"step": best, "test_metrics": result.metrics})
    return best_dir, best


def _write_bundle(session: _Run, state: TrainState, directory: str,
                  metadata: Mapping[str, Any]) -> None:
    """Writes `state` as a bundle (process 0) and waits for every process."""
    config = session.config
    variables, prompts = session.task.bundle_contents(_gather_to_host(state.params),
                                                      _gather_to_host(state.batch_stats))
    if jax.process_index() == 0:
        bundle_lib.save_bundle(
            directory, session.task.kind, session.task.model_config, variables, prompts=prompts,
            metadata={"mos_scale": MOS_SCALE, "score_range": [0.0, MOS_SCALE],
                      "image_size": config.data.image_size, "dataset": config.data.dataset,
                      "split": config.data.split, "protocol": config.protocol,
                      "initial_weights": session.task.source, **metadata})
    multihost_utils.sync_global_devices(f"bundle {os.path.basename(directory)} written")


def _select_on_test(session: _Run, state: TrainState, step: int) -> None:
    """The authors' protocol: scores the test part, and writes the checkpoints whose test PLCC
    or SRCC is the best so far (ties go to the later one, as theirs)."""
    result = evaluate_part(session.predict_for(state), session.parts["test"], session.config)
    session.writer.write(step, _prefixed("test", result.metrics))
    epoch = step / session.steps_per_epoch
    for name in session.selection.observe(step, epoch, result.metrics):
        _write_bundle(session, state, os.path.join(session.workdir,
                                                   test_selection.BUNDLE_DIRS[name]),
                      {"step": step, "epoch": epoch, "selected_on_test": True,
                       "selected_by": name, "test_metrics": result.metrics})
    best = session.selection.reported()
    session.writer.say(f"test step {step} (epoch {epoch:g}, selected on test): SRCC "
                       f"{result.metrics['srcc']:.4f} PLCC {result.metrics['plcc']:.4f} | best "
                       f"PLCC {best['best_test_plcc']:.4f} SRCC {best['best_test_srcc']:.4f}")
    if jax.process_index() == 0:
        session.selection.write()


def _finish_on_test(session: _Run) -> tuple[str, int]:
    """The authors' protocol: the best-test-PLCC bundle is the run's model (they distil the
    student from it); the reported values are in test_selection.json."""
    session.checkpointer.wait()
    reported = session.selection.reported()
    best = session.selection.best.get("best_test_plcc")
    if best is None:
        raise RuntimeError(f"{session.workdir}: no test evaluation gave a defined PLCC, so no "
                           "checkpoint was selected")
    logging.info("authors' protocol, selected on the test part: %s (best PLCC at step %d)",
                 reported, best["step"])
    session.writer.write(session.total_steps, {"selected_on_test": 1.0, **reported})
    return os.path.join(session.workdir, best["bundle"]), int(best["step"])


def train_and_evaluate(config: ml_collections.ConfigDict, split: Any,
                       workdir: str | os.PathLike) -> str:
    """Trains on one split (`SplitRef`: dataset, split_file, split key); returns the bundle dir.

    The entry point of dpiqa_jax.eval.multi_split (launch/run_splits.py).
    """
    return train(config_for_split(config, split), os.fspath(workdir)).best_model_dir
