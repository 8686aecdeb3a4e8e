"""Train-step parity: the authors' PyTorch training loop and ours, same weights and batches.

Dev only (imports torch). The torch model is built with random, perturbed weights
(`dpiqa_jax.dev.torch_models`), converted to our variables with the checkpoint converters,
and both sides train `steps` optimizer steps on the same random batches: torch with
`dpiqa_jax.dev.torch_train` (Adam, MultiStepLR stepped once per epoch), ours with the jitted
update of `dpiqa_jax.train.steps` and the optimizer and schedule of `dpiqa_jax.train.optim`. An
"epoch" is `STEPS_PER_EPOCH` steps, so the milestones fall inside a short run.

Randomness that cannot be shared is switched off on both sides: the teacher encodes the VAE
posterior mean (`latent="mean"`) instead of the authors' sample; the student's stochastic depth is
off (`StudentConfig.stochastic_depth=False`, drop rate 0 in the torch MBConvs). The student learns
fixed random maps fed to both sides as the teacher's maps (the teacher's own forward parity is
checked elsewhere). Everything runs in fp32 (the authors' fp16 autocast is left out).

Our gradients at step 1 are read from our Adam state after the first update (mu_1 = (1 - b1) g),
so they are the jitted step's own gradients.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import torch

from dpiqa_jax.convert import dpiqa as dpiqa_convert
from dpiqa_jax.convert import efficientnet as efficientnet_convert
from dpiqa_jax.dev import torch_models, torch_train
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.sd.unet import SD15_UNET_CONFIG, UNetConfig, tiny_unet_config
from dpiqa_jax.sd.vae import SD15_VAE_CONFIG, VAEConfig, tiny_vae_config
from dpiqa_jax.train import models, optim
from dpiqa_jax.train import state as state_lib
from dpiqa_jax.train import steps as steps_lib

SIZES = ("tiny", "sd15")
MODELS = ("teacher", "student")
STEPS_PER_EPOCH = 2
MILESTONE_EPOCHS = (1, 2)
# The authors' learning rates (their build.py) and torch Adam's defaults but eps (see ADAM_EPS).
LEARNING_RATES = {"teacher": 1e-5, "student": 1e-4}
# Adam's eps: 1 instead of the authors' 1e-8, so that rounding-level gradients cannot flip an
# lr-sized step (see PARAM_LR_TOL); the update formula and its bias corrections are the same.
ADAM_EPS = 1.0
ADAM = {"name": "adam", "b1": 0.9, "b2": 0.999, "eps": ADAM_EPS, "weight_decay": 0.0,
        "clip_norm": 0.0}
DEFAULT_RES = {("teacher", "tiny"): 64, ("teacher", "sd15"): 64, ("student", "tiny"): 64,
               ("student", "sd15"): 512}
NUM_PROMPTS = 5

_TINY_CHANNELS = (16, 32, 32, 32)
TINY_UNET = tiny_unet_config(_TINY_CHANNELS, 16, attention_head_dim=4, norm_num_groups=8)
TINY_VAE = tiny_vae_config((8, 16, 16, 16))
TINY_STUDENT = StudentConfig(backbone="b0", map_size=8, map_channels=4, hidden=16,
                             stochastic_depth=False)
FULL_STUDENT = StudentConfig(stochastic_depth=False)

# --------------------------------------------------------------------------- tolerances
# fp32 unit roundoff u = 2^-24 = 6e-8. Summing n terms in another order (torch's kernels vs XLA's,
# other thread counts) changes a sum by up to ~sqrt(n) u of the sum of the terms' magnitudes, and
# a chain of L layers compounds it: at tiny size L ~ 40 and n ~ 10^2..10^4 give ~ L sqrt(n) u ~
# 40 * 100 * 6e-8 = 2.4e-4 in the worst layer, which a mean loss mostly averages away. Measured
# at tiny size (2 threads; XLA's default and its fastest-compile code generation): loss 2e-7
# (teacher) and 6.4e-6 (student: training-mode BatchNorm over 2 images divides by small
# variances) relative at any of 5 steps.
LOSS_RTOL = 3e-5
# A gradient tensor's error relative to its own norm: the backward pass doubles the chain.
# Measured: 7e-6 (teacher), 8.2e-5 (student: squeeze-excitation biases, whose gradients sum
# products over the whole feature map through a BatchNorm backward).
GRAD_RTOL = 5e-4
# Tensors whose gradient is zero in exact arithmetic come out of fp32 as rounding residue: the
# student's projection-BatchNorm biases (the next training-mode BatchNorm removes any constant
# shift) have gradients of 1e-9..1e-8 of the whole gradient's norm, 50-90% of which differs
# between torch and XLA. Relative errors are therefore taken against max(tensor norm,
# NORM_FLOOR x the norm of all tensors): an error of GRAD_RTOL * 1e-3 (5e-7) of the model's
# gradient passes in any tensor; every real gradient here is above 2.8e-4 of the whole.
NORM_FLOOR = 1e-3
# Adam moments after N steps: mu is a weighted sum of gradients, so it inherits GRAD_RTOL;
# nu sums squares, d(g^2) = 2 g dg, so twice that. Measured: mu 4.8e-5, nu 3.4e-5 (student).
MU_RTOL = GRAD_RTOL
NU_RTOL = 2 * GRAD_RTOL
# Parameters after N steps, in units of sum_t lr_t (the most Adam can move an element). With the
# authors' eps = 1e-8 an element's step is ~lr * sign(g) whatever |g|, so where |g| is at
# rounding level (the biases above, and single elements of every large tensor) the sign and
# hence a whole lr-sized step is noise: measured 1.8 lr on those biases and 0.8 lr on single
# elements of most student kernels. The comparison therefore runs Adam with eps = 1 (see
# ADAM_EPS), where an element's step is lr * m / (sqrt(v) + 1) and its sensitivity to the
# gradient at most lr / eps: the parameter error in lr units is at most the absolute gradient
# error, measured <= 1.7e-3 (student, gradient norm 863; teacher 5e-8). Measured parameter
# errors: 5.2e-4 (student), 1.9e-5 (teacher).
PARAM_LR_TOL = 5e-3
# BatchNorm running statistics blend batch means and unbiased variances, whose error is the
# forward pass's (see LOSS_RTOL). Measured: 1e-6 (student).
BATCH_STATS_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class TrainComparison:
    """One compared quantity; `max_rel_err` is judged against `tolerance` (see the constants)."""

    model: str
    step: int
    quantity: str
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    worst: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def failed(self) -> bool:
        return not self.max_rel_err <= self.tolerance


@dataclasses.dataclass(frozen=True)
class TrainParitySetup:
    """What a run compares: model, size, steps, image side, batch size, seed."""

    model: str
    size: str
    steps: int = 5
    res: int | None = None
    batch: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS or self.size not in SIZES:
            raise ValueError(f"model {self.model!r} size {self.size!r}; expected {MODELS} x "
                             f"{SIZES}")
        first_milestone = MILESTONE_EPOCHS[0] * STEPS_PER_EPOCH
        if self.steps <= first_milestone:
            raise ValueError(f"--steps {self.steps} ends before the first learning-rate milestone "
                             f"(step {first_milestone}); give more than {first_milestone}")
        if self.batch < 2:
            raise ValueError("batch must be at least 2 (BatchNorm statistics, a mean loss)")

    @property
    def image_side(self) -> int:
        return self.res or DEFAULT_RES[self.model, self.size]


def describe(setup: TrainParitySetup) -> dict[str, Any]:
    """The conditions both sides ran under, as printed before the comparisons."""
    switched_off = ("VAE posterior sample: the posterior mean on both sides"
                    if setup.model == "teacher"
                    else "stochastic depth: drop rate 0 on both sides; the teacher's maps: the "
                         "same fixed random maps fed to both sides")
    return {"model": setup.model, "size": setup.size, "steps": setup.steps,
            "res": setup.image_side, "batch": setup.batch, "dtype": "float32",
            "torch_layout": "contiguous NCHW", "torch_threads": torch.get_num_threads(),
            "jax_devices": len(jax.devices()), "randomness_switched_off": switched_off,
            "learning_rate": LEARNING_RATES[setup.model], "steps_per_epoch": STEPS_PER_EPOCH,
            "milestone_epochs": list(MILESTONE_EPOCHS), "adam_eps": ADAM_EPS}


# --------------------------------------------------------------------------- shared pieces


def random_batches(setup: TrainParitySetup, map_shape: tuple[int, ...] | None
                   ) -> list[dict[str, np.ndarray]]:
    """`setup.steps` batches: images [B, H, W, 3] in [0, 1], MOS / 100 [B], maps [B, m, m, c]."""
    rng = np.random.default_rng(setup.seed + 1)
    side = setup.image_side
    batches = []
    for _ in range(setup.steps):
        batch = {"image": rng.uniform(0, 1, (setup.batch, side, side, 3)).astype(np.float32),
                 "mos_normalized": rng.uniform(0, 1, setup.batch).astype(np.float32)}
        if map_shape is not None:
            # Non-negative like the teacher's ReLU maps, of their scale.
            batch["teacher_map"] = rng.uniform(0, 0.5, (setup.batch,) + map_shape
                                               ).astype(np.float32)
        batches.append(batch)
    return batches


def _schedule_and_optimizer(model: str) -> tuple[optax.Schedule, optax.GradientTransformation]:
    schedule_config = ml_collections.ConfigDict({"milestone_steps": [],
                                                 "milestone_epochs": list(MILESTONE_EPOCHS)})
    schedule = optim.learning_rate_schedule(
        LEARNING_RATES[model], optim.milestone_steps(schedule_config, STEPS_PER_EPOCH),
        torch_train.LR_GAMMA)
    return schedule, optim.make_optimizer(ml_collections.ConfigDict(ADAM), schedule)


def adam_moments(opt_state: Any) -> tuple[Any, Any]:
    """(mu, nu) of the single Adam state inside an optax state."""
    (_, mu), = optax.tree_utils.tree_get_all_with_path(opt_state, "mu")
    (_, nu), = optax.tree_utils.tree_get_all_with_path(opt_state, "nu")
    return mu, nu


class Spill:
    """numpy arrays parked on disk and read back memory-mapped (full-size runs hold GiBs)."""

    def __init__(self, directory: str):
        self._directory = directory
        self._count = 0

    def __call__(self, pairs: Iterable[tuple[str, np.ndarray | None]]
                 ) -> dict[str, np.ndarray | None]:
        """Writes each array as it comes (views of live tensors are fine) and maps it back."""
        parked = {}
        for name, array in pairs:
            if array is None:
                parked[name] = None
                continue
            path = os.path.join(self._directory, f"{self._count}.npy")
            self._count += 1
            np.save(path, array)
            parked[name] = np.load(path, mmap_mode="r")
        return parked


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0))


def _norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64).ravel()))


def _scale(ref: np.ndarray, scale: str, floor: float, lr_total: float) -> float:
    if scale == "lr":
        return lr_total
    return max(_norm(ref), floor)


def compare_tensors(model: str, step: int, quantity: str, ours: Mapping[str, np.ndarray],
                    reference: Mapping[str, np.ndarray], tolerance: float, scale: str,
                    lr_total: float = 1.0) -> TrainComparison:
    """The worst tensor's error; both sides must hold the same names.

    `scale` 'norm': relative to the reference tensor's L2 norm, floored at NORM_FLOOR times the
    norm of all reference tensors together (see NORM_FLOOR); 'lr': relative to `lr_total`.
    """
    if set(ours) != set(reference):
        missing = sorted(set(reference) ^ set(ours))
        return TrainComparison(model, step, quantity, float("inf"), float("inf"), tolerance,
                               f"names differ: {missing[:5]}")
    floor = NORM_FLOOR * float(np.sqrt(sum(_norm(r) ** 2 for r in reference.values())))
    worst_abs, worst_rel, worst = 0.0, 0.0, ""
    for name, ref in reference.items():
        err = _max_abs(ours[name], ref)
        denominator = _scale(ref, scale, floor, lr_total)
        rel = err / denominator if denominator > 0 else (0.0 if err == 0 else float("inf"))
        worst_abs = max(worst_abs, err)
        if rel > worst_rel or not worst:
            worst_rel, worst = rel, name
    return TrainComparison(model, step, quantity, worst_abs, worst_rel, tolerance, worst)


def compare_losses(model: str, ours: Sequence[float], reference: Sequence[float]
                   ) -> Iterator[TrainComparison]:
    for step, (a, b) in enumerate(zip(ours, reference), start=1):
        err = abs(a - b)
        yield TrainComparison(model, step, "loss", err, err / abs(b), LOSS_RTOL)


def compare_untrained(model: str, first_grads: Mapping[str, np.ndarray | None],
                      ours: Mapping[str, np.ndarray]) -> Iterator[TrainComparison]:
    """Zero gradient wherever nothing trains, and the same tensors train on both sides.

    `grad_untrained`: the largest step-1 gradient element of a torch tensor we do not train (the
    VAE, the authors' unused layers) and of one of our trainable tensors that torch leaves without
    a gradient (outputs nobody reads, e.g. the UNet's `conv_out`). `trainable_tensors`: how many
    tensors have a resolvable gradient (below) on one side only.
    """
    candidates = [(n, g) for n, g in first_grads.items() if n not in ours]
    candidates += [(n, g) for n, g in ours.items() if first_grads.get(n) is None]
    largest, worst = 0.0, ""
    for name, grad in candidates:
        size = 0.0 if grad is None else float(np.max(np.abs(grad), initial=0))
        if size > largest or not worst:
            largest, worst = size, name
    yield TrainComparison(model, 1, "grad_untrained", largest, largest, 0.0, worst)
    # "Trains" means a gradient the comparison can resolve: above GRAD_RTOL x NORM_FLOOR of the
    # whole gradient's norm. Below it, a gradient that is zero in exact arithmetic (e.g. keys of
    # a self-attention over one token, SD's mid block at 64 px) may be rounding on one side.
    total = float(np.sqrt(sum(_norm(g) ** 2 for g in ours.values())))
    resolvable = GRAD_RTOL * NORM_FLOOR * total
    torch_trained = {n for n, g in first_grads.items()
                     if g is not None and np.max(np.abs(g), initial=0) > resolvable}
    ours_trained = {n for n, g in ours.items() if np.max(np.abs(g), initial=0) > resolvable}
    differing = sorted(torch_trained ^ ours_trained)
    yield TrainComparison(model, 1, "trainable_tensors", float(len(differing)),
                          float(len(differing)), 0.0, ", ".join(differing[:5]))


def _restricted(arrays: Mapping[str, np.ndarray | None], like: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    """`arrays` on the names of `like`; a name torch left without a gradient or Adam state
    (an unused output) holds zeros, which is what our optimizer keeps for it."""
    return {n: np.zeros_like(a) if arrays.get(n) is None else arrays[n] for n, a in like.items()}


# --------------------------------------------------------------------------- teacher


def teacher_architecture(size: str) -> tuple[dict[str, Any], dict[str, Any], TeacherConfig]:
    """(diffusers UNet config, diffusers VAE config, TeacherConfig) with the posterior mean."""
    if size == "sd15":
        return dict(SD15_UNET_CONFIG), dict(SD15_VAE_CONFIG), TeacherConfig(latent="mean")
    channels = tuple(_TINY_CHANNELS)
    config = TeacherConfig(
        unet=UNetConfig.from_diffusers(TINY_UNET), vae=VAEConfig.from_diffusers(TINY_VAE),
        image_adapter=ImageAdapterConfig(channels=channels, num_res_blocks=1),
        qfd=QFDConfig(level_channels=channels, hidden=32, se_reduction=16,
                      score_channels=(16, 8, 4), map_size=8, head_hidden=24),
        text_dim=TINY_UNET["cross_attention_dim"], latent="mean")
    return TINY_UNET, TINY_VAE, config


def _official_teacher_name(name: str) -> str:
    """TorchTeacher attribute names -> the authors' `DPIQA` state-dict names (`qfd` -> `QFD`)."""
    return "QFD." + name[len("qfd."):] if name.startswith("qfd.") else name


def _renamed(arrays: Mapping[str, Any]) -> dict[str, Any]:
    return {_official_teacher_name(n): a for n, a in arrays.items()}


class _TeacherNames:
    """Our teacher's trainable trees -> the authors' state-dict names and layouts."""

    def __init__(self, trainable: Any, frozen: Any, extras: Mapping[str, np.ndarray],
                 torch_shapes: Mapping[str, tuple[int, ...]]):
        self._zeros = jax.tree.map(np.zeros_like, frozen)
        self._extras = extras
        self._shapes = torch_shapes
        # Ones where we train, zeros where we do not: the torch names our optimizer covers.
        indicator = self._convert(jax.tree.map(np.ones_like, trainable))
        self.trained = {n for n, a in indicator.items() if n not in extras and np.all(a == 1)}

    def _convert(self, tree: Any) -> dict[str, np.ndarray]:
        full = state_lib.merge_params(jax.tree.map(np.asarray, tree), self._zeros)
        return dpiqa_convert.teacher_flax_to_official({"params": full}, self._extras,
                                                      self._shapes)

    def to_torch(self, tree: Any) -> dict[str, np.ndarray]:
        converted = self._convert(tree)
        return {n: converted[n] for n in self.trained}


def teacher_parity(setup: TrainParitySetup) -> Iterator[TrainComparison]:
    unet_config, vae_config, config = teacher_architecture(setup.size)
    model = torch_models.build_torch_teacher(unet_config, vae_config, config, seed=setup.seed,
                                             trainable=True)
    rng = np.random.default_rng(setup.seed + 2)
    prompts = rng.standard_normal((NUM_PROMPTS, config.text_dim)).astype(np.float32)
    batches = random_batches(setup, None)
    with tempfile.TemporaryDirectory(prefix="dpiqa_train_parity_") as directory:
        spill = Spill(directory)
        initial = spill((n, t.detach().numpy()) for n, t in model.state_dict().items())
        torch_prompts = torch.from_numpy(prompts)
        trace = torch_train.train_torch(
            model, lambda m, b: torch_train.teacher_loss(m, b, torch_prompts), batches,
            learning_rate=LEARNING_RATES["teacher"], milestone_epochs=MILESTONE_EPOCHS,
            steps_per_epoch=STEPS_PER_EPOCH, adam_eps=ADAM_EPS, keep=spill)
        del model
        gc.collect()
        initial, first_grads = _renamed(initial), _renamed(trace.first_grads)
        final = {"params": _renamed(trace.params), "mu": _renamed(trace.exp_avg),
                 "nu": _renamed(trace.exp_avg_sq)}
        yield from _teacher_jax_side(setup, config, initial, prompts, batches, trace.losses,
                                     first_grads, final)


def _teacher_jax_side(setup, config, initial, prompts, batches, torch_losses, first_grads,
                      final) -> Iterator[TrainComparison]:
    module = Teacher(config)
    target = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, setup.image_side, setup.image_side, 3),
                                                 np.float32),
                            jax.ShapeDtypeStruct(prompts.shape, np.float32))
    variables, extras = dpiqa_convert.teacher_official_to_flax(initial, target)
    trainable, frozen = state_lib.partition_params(
        variables["params"], models.teacher_frozen_patterns(
            ml_collections.ConfigDict({"freeze_unet": False})))
    del variables
    names = _TeacherNames(trainable, frozen, extras, {n: a.shape for n, a in initial.items()})
    # On the device now, so that the host copy is freed before the optimizer state joins it.
    trainable = jax.device_put(trainable)
    schedule, optimizer = _schedule_and_optimizer("teacher")
    update = jax.jit(steps_lib.make_teacher_update(module, optimizer, schedule, seed=setup.seed),
                     donate_argnums=0)
    state = state_lib.create_train_state(trainable, {}, optimizer)
    frozen_inputs = {"params": frozen, "prompts": prompts}
    yield from _run_ours("teacher", setup, update, state, frozen_inputs, batches, torch_losses,
                         first_grads, final, names.to_torch)


# --------------------------------------------------------------------------- student


def student_parity(setup: TrainParitySetup) -> Iterator[TrainComparison]:
    config = TINY_STUDENT if setup.size == "tiny" else FULL_STUDENT
    model, _ = torch_models.build_torch_student(config, seed=setup.seed, prefer_torchvision=False)
    if not torch_train.disable_stochastic_depth(model):
        raise RuntimeError("the torch student has no MBConv block to switch stochastic depth off")
    batches = random_batches(setup, (config.map_size, config.map_size, config.map_channels))
    with tempfile.TemporaryDirectory(prefix="dpiqa_train_parity_") as directory:
        spill = Spill(directory)
        initial = spill((n, t.detach().numpy()) for n, t in model.state_dict().items())
        trace = torch_train.train_torch(
            model, torch_train.student_loss, batches, learning_rate=LEARNING_RATES["student"],
            milestone_epochs=MILESTONE_EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, adam_eps=ADAM_EPS,
            keep=spill)
        del model
        gc.collect()
        final = {"params": trace.params, "mu": trace.exp_avg, "nu": trace.exp_avg_sq,
                 "batch_stats": trace.buffers}
        yield from _student_jax_side(setup, config, initial, batches, trace.losses,
                                     trace.first_grads, final)


def _student_params_to_torch(tree: Any) -> dict[str, np.ndarray]:
    return efficientnet_convert.student_flax_to_official(
        {"params": jax.tree.map(np.asarray, tree)})


def _student_batch_stats_to_torch(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
    converted = efficientnet_convert.student_flax_to_official(
        {"params": jax.tree.map(np.asarray, params),
         "batch_stats": jax.tree.map(np.asarray, batch_stats)})
    return {n: a for n, a in converted.items() if n.endswith(("running_mean", "running_var"))}


def _student_jax_side(setup, config, initial, batches, torch_losses, first_grads, final
                      ) -> Iterator[TrainComparison]:
    module = Student(config)
    image = jax.ShapeDtypeStruct((2, setup.image_side, setup.image_side, 3), np.float32)
    target = jax.eval_shape(lambda key, x: module.init(key, x, train=False), jax.random.key(0),
                            image)
    variables = efficientnet_convert.student_official_to_flax(initial, target)
    schedule, optimizer = _schedule_and_optimizer("student")
    update = jax.jit(steps_lib.make_student_update(module, optimizer, schedule, seed=setup.seed,
                                                   teacher=None), donate_argnums=0)
    state = state_lib.create_train_state(variables["params"], variables["batch_stats"], optimizer)
    final_state = yield from _run_ours("student", setup, update, state, {}, batches, torch_losses,
                                       first_grads, final, _student_params_to_torch)
    ours = _student_batch_stats_to_torch(final_state.params, final_state.batch_stats)
    yield compare_tensors("student", setup.steps, "batch_stats", ours, final["batch_stats"],
                          BATCH_STATS_RTOL, "norm")


# --------------------------------------------------------------------------- our loop


def _run_ours(model, setup, update, state, frozen, batches, torch_losses, first_grads, final,
              to_torch):
    """Runs our update over `batches`, yielding the comparisons; returns the final state."""
    b1 = ADAM["b1"]
    losses = []
    for step, batch in enumerate(batches, start=1):
        state, metrics = update(state, frozen, batch)
        losses.append(float(metrics["loss"]))
        if step == 1:
            mu, _ = adam_moments(state.opt_state)
            grads = to_torch(mu)
            for name in grads:  # one tensor at a time: a full-size copy would not fit
                grads[name] = grads[name] / (1.0 - b1)
            yield compare_tensors(model, 1, "grad", grads, _restricted(first_grads, grads),
                                  GRAD_RTOL, "norm")
            yield from compare_untrained(model, first_grads, grads)
            del mu, grads
    yield from compare_losses(model, losses, torch_losses)
    lr_total = sum(LEARNING_RATES[model] * torch_train.LR_GAMMA ** sum(
        step >= e * STEPS_PER_EPOCH for e in MILESTONE_EPOCHS) for step in range(setup.steps))
    params = to_torch(state.params)
    yield compare_tensors(model, setup.steps, "param_update", params,
                          _restricted(final["params"], params), PARAM_LR_TOL, "lr", lr_total)
    del params
    for quantity, moment in zip(("adam_mu", "adam_nu"), adam_moments(state.opt_state)):
        ours = to_torch(moment)
        yield compare_tensors(model, setup.steps, quantity, ours,
                              _restricted(final[quantity[5:]], ours),
                              MU_RTOL if quantity == "adam_mu" else NU_RTOL, "norm")
        del ours
    return state


def train_parity(setup: TrainParitySetup) -> Iterator[TrainComparison]:
    """Yields every comparison of one run (the printed order)."""
    yield from (teacher_parity if setup.model == "teacher" else student_parity)(setup)
