"""Speed of the DP-IQA teacher and student in JAX (and, with the reference, in PyTorch).

One `Record` per measurement, printed as a JSON line by `launch/benchmark.py`:

* `teacher_infer`: VAE encoder + image adapter + UNet + QFD on a batch, prompts [1485, D].
* `teacher_train`: one optimizer step of the teacher as `dpiqa_jax.train.steps` trains it (the VAE
  frozen outside the differentiated function, Adam on everything else).
* `student_infer`, `student_train`: the EfficientNet student; its train step takes the teacher's
  maps from the batch (a map cache), as the distillation is run.
* `input_pipeline` (built in the launcher): decode + resize of 1024x768 JPEGs.
* `teacher_score`, `student_score`: what a user of `launch.score` gets: a random model saved as a
  bundle, loaded with `Scorer.load`, scoring `batch` PNG files per step (read, decode, resize,
  model), at batch sizes 1 and 8 by default; memory is the process's peak RSS (absolute, loading
  and compiling included), so the launcher runs each batch size in its own process.

Timing: the program is compiled ahead of time (`compile_s`), run `warmup` times, then `steps`
times, each call blocking until its outputs are ready; `step_ms` is the median call. Inputs are
already on the device, so only the model is timed. Weights are random (`random_variables`):
speed does not depend on their values.

`flops_per_image` comes from XLA's cost analysis of the compiled JAX program divided by the batch;
the torch record of the same measurement reuses it (same model, same work). `mfu` is achieved
FLOP/s over `peak_tflops`, which defaults to 989 TFLOP/s (H100/H200 SXM, dense bf16) on those GPUs
in bf16 and is null elsewhere unless given.

Memory: `peak_memory_kind` says what `peak_memory_bytes` is: the JAX device's
`peak_bytes_in_use` (a process-lifetime peak: run one measurement per process for a per-program
figure), torch's `max_memory_allocated` (reset per measurement), or on CPU the growth of the
process's peak RSS during the measurement (0 when an earlier measurement peaked higher).
`compiled_memory_bytes` is XLA's own figure for the JAX program (arguments + outputs + temporaries
- donated aliases), of one device's share when a line's `devices` > 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from dpiqa_jax import bundle, inference, scorer
from dpiqa_jax.dev.sd_parity import CONTEXT_TOKENS, TINY_UNET_CONFIG, TINY_VAE_CONFIG
from dpiqa_jax.models import fold
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.efficientnet import efficientnet_config
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.primitives.dtypes import cast_floating
from dpiqa_jax.sd.attention import AttentionKernel
from dpiqa_jax.sd.unet import SD15_UNET_CONFIG, UNetConfig
from dpiqa_jax.sd.vae import SD15_VAE_CONFIG, VAEConfig
from dpiqa_jax.train import models, optim, steps
from dpiqa_jax.train.state import create_train_state, partition_params

TEACHER_INFER = "teacher_infer"
TEACHER_TRAIN = "teacher_train"
STUDENT_INFER = "student_infer"
STUDENT_TRAIN = "student_train"
INPUT_PIPELINE = "input_pipeline"
MODEL_MEASUREMENTS = (TEACHER_INFER, TEACHER_TRAIN, STUDENT_INFER, STUDENT_TRAIN)
TEACHER_SCORE = "teacher_score"
STUDENT_SCORE = "student_score"
SCORING_MEASUREMENTS = (TEACHER_SCORE, STUDENT_SCORE)
SCORING_BATCHES = (1, 8)
ONNXRUNTIME = "onnxruntime"
MEASUREMENTS = MODEL_MEASUREMENTS + (INPUT_PIPELINE,) + SCORING_MEASUREMENTS
SIZES = ("tiny", "full")
DTYPES = ("auto", "float32", "bfloat16")
# Dense bf16 tensor-core peak of the H100 / H200 SXM (the H200 has the H100's compute).
HOPPER_BF16_PEAK_TFLOPS = 989.0
_HOPPER_KINDS = ("H100", "H200")
_MAP_CHANNELS = 8
_VAE_DOWNSCALE = 8
_STUDENT_STRIDE = 32


# --------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class BenchmarkSize:
    """The models and batches of one `--size`.

    Attributes:
      name: 'tiny' or 'full'.
      unet, vae: diffusers configs of the teacher's UNet and VAE (the torch side builds from them).
      teacher, student: the model configs.
      num_prompts: K, the prompt embeddings (cross-attention context tokens).
      resolution: image side in pixels.
      teacher_batch, student_batch: images per step.
    """

    name: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    teacher: TeacherConfig
    student: StudentConfig
    num_prompts: int
    resolution: int
    teacher_batch: int
    student_batch: int

    def batch(self, measurement: str) -> int:
        return self.teacher_batch if measurement.startswith("teacher") else self.student_batch


def _teacher_config(unet: Mapping[str, Any], vae: Mapping[str, Any], map_size: int,
                    qfd: QFDConfig) -> TeacherConfig:
    unet_config = UNetConfig.from_diffusers(unet)
    channels = tuple(unet_config.block_out_channels)
    return TeacherConfig(
        unet=unet_config, vae=VAEConfig.from_diffusers(vae),
        image_adapter=ImageAdapterConfig(channels=channels),
        qfd=dataclasses.replace(qfd, level_channels=channels, map_size=map_size),
        text_dim=unet_config.cross_attention_dim)


def benchmark_size(name: str, *, resolution: int = 0, student_backbone: str = "",
                   batch: int = 0, student_map_size: int = 0) -> BenchmarkSize:
    """The models of `name` ('tiny': parity.py's tiny SD configs, a small adapter and QFD,
    EfficientNet-B0 at 64x64, batch 2; 'full': SD 1.5 and B7 at 512x512, batch 16 / 32).

    Non-zero `resolution`, `batch` and a non-empty `student_backbone` replace the defaults; the
    quality maps are resolution / 8 wide, as the teacher's latent, unless `student_map_size` sets
    the student's (a student-only run, e.g. Lite0 at 224x224 with the authors' 64x64 map; the
    resolution then needs to be a multiple of 32 only, the backbone's stride).
    """
    if name not in SIZES:
        raise ValueError(f"benchmark size {name!r}; expected one of {SIZES}")
    tiny = name == "tiny"
    resolution = resolution or (64 if tiny else 512)
    # The teacher's adapter's 8x unshuffle and its UNet's three downsamplings must divide evenly.
    multiple = _STUDENT_STRIDE if student_map_size else _VAE_DOWNSCALE * 8
    if resolution % multiple:
        raise ValueError(f"resolution {resolution} is not a multiple of {multiple}")
    map_size = resolution // _VAE_DOWNSCALE
    unet, vae = (TINY_UNET_CONFIG, TINY_VAE_CONFIG) if tiny else (SD15_UNET_CONFIG,
                                                                  SD15_VAE_CONFIG)
    qfd = (QFDConfig(hidden=32, se_reduction=16, score_channels=(16, 8, _MAP_CHANNELS),
                     head_hidden=32) if tiny else QFDConfig())
    student = (StudentConfig(backbone="b0", hidden=32) if tiny else StudentConfig())
    student = dataclasses.replace(student, map_size=student_map_size or map_size,
                                  backbone=student_backbone or student.backbone)
    return BenchmarkSize(
        name=name, unet=unet, vae=vae, teacher=_teacher_config(unet, vae, map_size, qfd),
        student=student, num_prompts=CONTEXT_TOKENS, resolution=resolution,
        teacher_batch=batch or (2 if tiny else 16), student_batch=batch or (2 if tiny else 32))


def jax_platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform of the first local device."""
    return jax.local_devices()[0].platform


def compute_dtype(dtype: str, platform: str) -> str:
    """'auto' -> bfloat16 on accelerators, float32 on CPU (where bf16 matmuls are emulated)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; expected one of {DTYPES}")
    if dtype == "auto":
        return "float32" if platform == "cpu" else "bfloat16"
    return dtype


def default_peak_tflops(device_kind: str, dtype: str) -> float | None:
    """989 for H100/H200 in bf16; None (unknown) elsewhere."""
    if dtype == "bfloat16" and any(kind in device_kind for kind in _HOPPER_KINDS):
        return HOPPER_BF16_PEAK_TFLOPS
    return None


# --------------------------------------------------------------------------- records


@dataclasses.dataclass
class Record:
    """One measurement; `to_json` gives the printed line (fields: the module docstring).

    `steps` is None for the input pipeline, whose figure is images over seconds of whole passes;
    `extra` adds measurement-specific keys (context tokens, backbone, torch settings).
    """

    measurement: str
    framework: str
    batch: int
    resolution: int
    img_per_s: float
    step_ms: float | None
    steps: int | None
    compile_s: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    dtype: str
    device: str
    compiled_memory_bytes: int | None = None
    flops_per_image: float | None = None
    peak_tflops: float | None = None
    weights: str = "random"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def tflops(self) -> float | None:
        if self.flops_per_image is None:
            return None
        return self.flops_per_image * self.img_per_s / 1e12

    @property
    def mfu(self) -> float | None:
        if self.tflops is None or self.peak_tflops is None:
            return None
        return self.tflops / self.peak_tflops

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "extra"}
        return {**fields, "tflops": self.tflops, "mfu": self.mfu, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def speedups(records: Sequence[Record]) -> Iterator[dict[str, Any]]:
    """Per measurement run by JAX and another framework: jax img/s over theirs. Against torch the
    ratio is `speedup`, against ONNX Runtime `speedup_vs_onnxruntime`."""
    by_key = {(r.measurement, r.framework): r for r in records}
    for baseline, key in (("torch", "speedup"), (ONNXRUNTIME, f"speedup_vs_{ONNXRUNTIME}")):
        for measurement in MODEL_MEASUREMENTS:
            ours, theirs = by_key.get((measurement, "jax")), by_key.get((measurement, baseline))
            if ours is not None and theirs is not None:
                yield {"measurement": measurement, key: ours.img_per_s / theirs.img_per_s,
                       "jax_img_per_s": ours.img_per_s,
                       f"{baseline}_img_per_s": theirs.img_per_s}


# --------------------------------------------------------------------------- timing, memory


def median_step_seconds(run_step: Callable[[], Any], steps: int, warmup: int) -> float:
    """Median wall time of `steps` calls after `warmup` untimed ones.

    `run_step` must return only once its work is done (block on the outputs / synchronize).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        run_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_device_name() -> str:
    return f"cpu ({os.cpu_count()} cores)"


class JaxMemoryProbe:
    """The device's peak bytes in use where JAX reports it, else the process's peak-RSS growth."""

    def __init__(self, device: jax.Device):
        self._device = device
        self._rss_start = peak_rss_bytes()

    def result(self) -> tuple[int, str]:
        stats = self._device.memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "jax_peak_bytes_in_use_process_lifetime"
        return peak_rss_bytes() - self._rss_start, "process_peak_rss_delta"


def jax_device_name(device: jax.Device) -> str:
    if device.platform == "cpu":
        return cpu_device_name()
    return f"{device.platform}:{device.device_kind}"


def xla_flops(compiled: Any) -> float | None:
    """Total FLOPs XLA counts in a compiled program (None when the backend gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def xla_memory_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries - donated aliases of a compiled program, per XLA."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


# --------------------------------------------------------------------------- JAX programs


@dataclasses.dataclass
class Program:
    """A compiled JAX program and a call that runs it once on fixed inputs, blocking; a program
    split over `devices` reports XLA's cost and memory of one device's share."""

    compiled: Any
    compile_s: float
    run_step: Callable[[], Any]
    devices: int = 1


def _aot_compile(fn: Callable, *args, **jit_kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - start


def random_inputs(size: BenchmarkSize, batch: int, seed: int) -> dict[str, np.ndarray]:
    """A batch of images in [0, 1] [B, R, R, 3], MOS/100 [B], teacher maps [B, m, m, 8] and
    prompt embeddings [K, D], float32 on the host."""
    rng = np.random.default_rng(seed)
    side, map_side = size.resolution, size.student.map_size
    return {
        "image": rng.uniform(0, 1, (batch, side, side, 3)).astype(np.float32),
        "mos_normalized": rng.uniform(0, 1, (batch,)).astype(np.float32),
        "teacher_map": rng.uniform(0, 1, (batch, map_side, map_side, size.student.map_channels)
                                   ).astype(np.float32),
        "prompts": rng.standard_normal((size.num_prompts, size.teacher.text_dim)
                                       ).astype(np.float32),
    }


def random_variables(abstract: Any, seed: int) -> Any:
    """Host float32 values for an abstract variables tree: kernels N(0, 1 / fan_in), norm scales
    and BatchNorm variances 1, everything else 0.

    Made with numpy rather than the modules' initialisers, whose jitted random number generation
    takes minutes to compile on CPU; speed does not depend on the values.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _host_teacher_params(module: Teacher, inputs: Mapping[str, Any], seed: int) -> Any:
    abstract = jax.eval_shape(module.init, jax.random.key(0), inputs["image"][:1],
                              inputs["prompts"])
    return random_variables(abstract, seed)["params"]


def _host_student_variables(module: Student, inputs: Mapping[str, Any], seed: int) -> Any:
    return random_variables(jax.eval_shape(lambda key, x: module.init(key, x, train=False),
                                           jax.random.key(0), inputs["image"][:1]), seed)


def teacher_infer_program(size: BenchmarkSize, dtype: str, batch: int, seed: int,
                          attention: AttentionKernel) -> Program:
    """`Teacher.__call__` on bf16 (or `dtype`) params: images + prompts -> score, map."""
    inputs = jax.device_put(random_inputs(size, batch, seed))
    module = Teacher(size.teacher, dtype=jnp.dtype(dtype), attention_kernel=attention)
    # Cast on the host: float32 copies on the device would count in the peak memory.
    params = jax.device_put(cast_floating(_host_teacher_params(module, inputs, seed), dtype))

    def infer(params, images, prompts):
        return module.apply({"params": params}, images, prompts)

    compiled, seconds = _aot_compile(infer, params, inputs["image"], inputs["prompts"])
    return Program(compiled, seconds, lambda: jax.block_until_ready(
        compiled(params, inputs["image"], inputs["prompts"])))


def student_infer_program(size: BenchmarkSize, dtype: str, batch: int, seed: int,
                          devices: int = 1) -> Program:
    """`Student` in inference mode on `dtype` weights compiled as scoring compiles them
    (`inference.student_forward`): BatchNorms folded into the convolutions (`models.fold`), the
    variables closed over as constants; the whole batch in one call (scoring runs the same
    program one image at a time, for results independent of the batch)."""
    inputs = jax.device_put(random_inputs(size, batch, seed))
    module = Student(size.student, dtype=jnp.dtype(dtype))
    variables = fold.fold_batch_norms(_host_student_variables(module, inputs, seed),
                                      efficientnet_config(size.student.backbone).bn_eps)
    constants = jax.tree.map(np.asarray, {"params": cast_floating(variables["params"], dtype),
                                          "batch_stats": variables["batch_stats"]})

    def infer(images):
        return module.apply(constants, images, train=False)

    if batch % devices:
        raise ValueError(f"batch {batch} does not split evenly over {devices} devices")
    # Split as a scorer splits it: the same program on each device's share of the batch.
    compiled, seconds = _aot_compile(inference.split_batch(infer, devices), inputs["image"])
    return Program(compiled, seconds, lambda: jax.block_until_ready(compiled(inputs["image"])),
                   devices)


def _donating_loop(compiled: Any, state: Any, frozen: Any, batch: Any) -> Callable[[], Any]:
    """A call running one update on the current state (donated, so replaced every call)."""
    current = [state]

    def run_step():
        current[0], metrics = compiled(current[0], frozen, batch)
        return jax.block_until_ready((current[0], metrics))

    return run_step


def _optimizer(training: ml_collections.ConfigDict):
    schedule = optim.learning_rate_schedule(training.optimizer.learning_rate, [],
                                            training.schedule.factor)
    return optim.make_optimizer(training.optimizer, schedule), schedule


def _compile_update(update: steps.UpdateFn, state: Any, frozen: Any, batch: Any,
                    name: str) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = steps.compile_update(update, state, frozen, batch, state_shardings=None,
                                    frozen_shardings=None, batch_shardings=None,
                                    metrics_sharding=None, name=name)
    return compiled, time.perf_counter() - start


def teacher_train_program(size: BenchmarkSize, dtype: str, batch: int, seed: int,
                          training: ml_collections.ConfigDict,
                          attention: AttentionKernel) -> Program:
    """`steps.make_teacher_update` as training runs it: fp32 master weights of the trained part
    (`training.param_dtype`), the frozen part (`models.teacher_frozen_patterns`) and the prompts
    in the compute dtype, Adam from `training.optimizer`, donated state."""
    inputs = jax.device_put(random_inputs(size, batch, seed))
    module = Teacher(size.teacher, dtype=jnp.dtype(dtype),
                     param_dtype=jnp.dtype(training.param_dtype), attention_kernel=attention)
    trainable, frozen_params = partition_params(_host_teacher_params(module, inputs, seed),
                                                models.teacher_frozen_patterns(training))
    frozen = jax.device_put(cast_floating({"params": frozen_params, "prompts": inputs["prompts"]},
                                          dtype))
    optimizer, schedule = _optimizer(training)
    state = jax.jit(lambda p: create_train_state(p, {}, optimizer))(
        jax.device_put(cast_floating(trainable, training.param_dtype)))
    update = steps.make_teacher_update(module, optimizer, schedule, seed=seed,
                                       remat_policy=training.remat_policy)
    train_batch = {k: inputs[k] for k in ("image", "mos_normalized")}
    compiled, seconds = _compile_update(update, state, frozen, train_batch, "teacher")
    return Program(compiled, seconds, _donating_loop(compiled, state, frozen, train_batch))


def student_train_program(size: BenchmarkSize, dtype: str, batch: int, seed: int,
                          training: ml_collections.ConfigDict) -> Program:
    """`steps.make_student_update` with the teacher's maps in the batch (a map cache)."""
    inputs = jax.device_put(random_inputs(size, batch, seed))
    module = Student(size.student, dtype=jnp.dtype(dtype),
                     param_dtype=jnp.dtype(training.param_dtype))
    variables = _host_student_variables(module, inputs, seed)
    optimizer, schedule = _optimizer(training)
    state = jax.jit(lambda p, b: create_train_state(p, b, optimizer))(
        *jax.device_put((cast_floating(variables["params"], training.param_dtype),
                         variables["batch_stats"])))
    update = steps.make_student_update(
        module, optimizer, schedule, seed=seed, teacher=None,
        score_weight=training.loss.score_weight, map_weight=training.loss.map_weight,
        remat_policy=training.remat_policy)
    train_batch = {k: inputs[k] for k in ("image", "mos_normalized", "teacher_map")}
    compiled, seconds = _compile_update(update, state, {}, train_batch, "student")
    return Program(compiled, seconds, _donating_loop(compiled, state, {}, train_batch))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every measurement of one run shares.

    Attributes:
      size: the models and default batches.
      dtype: compute dtype ('float32' or 'bfloat16', already resolved from 'auto').
      steps, warmup: timed and untimed calls per measurement.
      seed: of the random weights and inputs.
      peak_tflops: the MFU denominator; None = `default_peak_tflops` of the device.
      teacher_training, student_training: the training configs (configs/teacher.py,
        configs/student.py) whose optimizer, frozen parts, remat policy, master-weight dtype and
        loss weights the train steps use.
      attention: how the teacher's attention runs, in both teacher measurements.
      student_infer_devices: local devices the JAX student_infer batch is split over.
    """

    size: BenchmarkSize
    dtype: str
    steps: int
    warmup: int
    seed: int
    peak_tflops: float | None
    teacher_training: ml_collections.ConfigDict
    student_training: ml_collections.ConfigDict
    attention: AttentionKernel = AttentionKernel()
    student_infer_devices: int = 1


def jax_program(measurement: str, settings: RunSettings) -> Program:
    size, dtype, seed = settings.size, settings.dtype, settings.seed
    batch = size.batch(measurement)
    if measurement == TEACHER_INFER:
        return teacher_infer_program(size, dtype, batch, seed, settings.attention)
    if measurement == TEACHER_TRAIN:
        return teacher_train_program(size, dtype, batch, seed, settings.teacher_training,
                                     settings.attention)
    if measurement == STUDENT_INFER:
        return student_infer_program(size, dtype, batch, seed, settings.student_infer_devices)
    if measurement == STUDENT_TRAIN:
        return student_train_program(size, dtype, batch, seed, settings.student_training)
    raise ValueError(f"unknown model measurement {measurement!r}; expected one of "
                     f"{MODEL_MEASUREMENTS}")


def measure_jax(measurement: str, settings: RunSettings) -> Record:
    """Compiles and times one measurement's JAX program on the first local device."""
    device = jax.local_devices()[0]
    probe = JaxMemoryProbe(device)
    with jax.default_device(device):
        program = jax_program(measurement, settings)
        step_s = median_step_seconds(program.run_step, settings.steps, settings.warmup)
    peak_bytes, peak_kind = probe.result()
    batch = settings.size.batch(measurement)
    flops = xla_flops(program.compiled)
    flops = None if flops is None else flops * program.devices
    peak_tflops = settings.peak_tflops or default_peak_tflops(device.device_kind,
                                                              settings.dtype)
    return Record(
        measurement=measurement, framework="jax", batch=batch,
        resolution=settings.size.resolution, img_per_s=batch / step_s, step_ms=1e3 * step_s,
        steps=settings.steps, compile_s=program.compile_s, peak_memory_bytes=peak_bytes,
        peak_memory_kind=peak_kind, dtype=settings.dtype, device=jax_device_name(device),
        compiled_memory_bytes=xla_memory_bytes(program.compiled),
        flops_per_image=None if flops is None else flops / batch, peak_tflops=peak_tflops,
        extra={"flops_source": "xla_cost_analysis", **_model_extra(measurement, settings)})


def measure_onnxruntime(settings: RunSettings, threads: int) -> Record:
    """`student_infer` in ONNX Runtime on the CPU: the same random student (same seed) exported by
    `dpiqa_jax.onnx_export`, the same images as NCHW, `threads` intra-op threads, ONNX Runtime's
    default (full) graph optimisation."""
    # pylint: disable=import-outside-toplevel  # optional dependencies of this measurement only
    import onnxruntime

    from dpiqa_jax import bundle, onnx_export

    if settings.dtype != "float32":
        raise ValueError(f"the ONNX export is float32, this run is {settings.dtype}")
    size = settings.size
    inputs = random_inputs(size, size.student_batch, settings.seed)
    module = Student(size.student)
    student = bundle.Bundle("student", dataclasses.asdict(size.student),
                            _host_student_variables(module, inputs, settings.seed),
                            metadata={"mos_scale": 1.0, "image_size": size.resolution})
    rss_start = peak_rss_bytes()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        onnx_export.student_onnx_model(student).SerializeToString(), options,
        providers=["CPUExecutionProvider"])
    feed = {onnx_export.INPUT_NAME: np.ascontiguousarray(inputs["image"].transpose(0, 3, 1, 2))}
    step_s = median_step_seconds(lambda: session.run(None, feed), settings.steps, settings.warmup)
    batch = size.student_batch
    return Record(
        measurement=STUDENT_INFER, framework=ONNXRUNTIME, batch=batch,
        resolution=size.resolution, img_per_s=batch / step_s, step_ms=1e3 * step_s,
        steps=settings.steps, compile_s=None, peak_memory_bytes=peak_rss_bytes() - rss_start,
        peak_memory_kind="process_peak_rss_delta", dtype="float32", device=cpu_device_name(),
        extra={"student_backbone": size.student.backbone, "onnxruntime": onnxruntime.__version__,
               "onnxruntime_threads": threads})


def _model_extra(measurement: str, settings: RunSettings) -> dict[str, Any]:
    if measurement == STUDENT_INFER:
        return {"student_backbone": settings.size.student.backbone, "batch_norm": "folded",
                "weights_as": "constants", "devices": settings.student_infer_devices}
    if measurement.startswith("student"):
        return {"student_backbone": settings.size.student.backbone}
    return {"context_tokens": settings.size.num_prompts,
            "attention": settings.attention.implementation,
            "attention_query_chunk": settings.attention.query_chunk}



# --------------------------------------------------------------------------- scoring end to end


def random_bundle(kind: str, size: BenchmarkSize, directory: str, seed: int) -> str:
    """A bundle of random weights (`random_variables`) of the size's teacher or student."""
    images = jnp.zeros((1, size.resolution, size.resolution, 3), jnp.float32)
    metadata = {"mos_scale": bundle.MOS_SCALE, "image_size": size.resolution}
    if kind == "teacher":
        prompts = random_inputs(size, 1, seed)["prompts"]
        module = Teacher(size.teacher)
        abstract = jax.eval_shape(module.init, jax.random.key(0), images, prompts)
        return bundle.save_bundle(directory, kind, size.teacher, random_variables(abstract, seed),
                                  prompts=prompts, metadata=metadata)
    module = Student(size.student)
    abstract = jax.eval_shape(lambda key: module.init(key, images, train=False),
                              jax.random.key(0))
    return bundle.save_bundle(directory, kind, size.student, random_variables(abstract, seed),
                              metadata=metadata)


def _random_pngs(size: BenchmarkSize, count: int, directory: str, seed: int) -> list[str]:
    pixels = random_inputs(size, count, seed)["image"]
    paths = []
    for index, image in enumerate(pixels):
        path = os.path.join(directory, f"{index}.png")
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def measure_scoring(measurement: str, size: BenchmarkSize, batch: int, steps: int, warmup: int,
                    seed: int, directory: str) -> Record:
    """`Scorer.score_files` on `batch` PNG files per step, a random bundle loaded from disk."""
    if measurement not in SCORING_MEASUREMENTS:
        raise ValueError(f"unknown scoring measurement {measurement!r}; expected one of "
                         f"{SCORING_MEASUREMENTS}")
    kind = measurement.split("_")[0]
    model_dir = random_bundle(kind, size, os.path.join(directory, kind), seed)
    paths = _random_pngs(size, batch, directory, seed)
    start = time.perf_counter()
    model = scorer.Scorer.load(model_dir, batch_size=batch)
    load_s = time.perf_counter() - start

    def score_batch():
        failed = [r.error for r in model.score_files(paths) if not r.ok]
        if failed:
            raise RuntimeError(f"scoring failed: {failed[0]}")

    step_s = median_step_seconds(score_batch, steps, warmup)
    return Record(
        measurement=measurement, framework="jax", batch=batch, resolution=size.resolution,
        img_per_s=batch / step_s, step_ms=1e3 * step_s, steps=steps, compile_s=None,
        peak_memory_bytes=peak_rss_bytes(), peak_memory_kind="process_peak_rss",
        dtype="float32", device=jax_device_name(jax.local_devices()[0]),
        extra={"load_s": load_s, "files": "png", "attention_query_chunk":
               model.module.attention_kernel.query_chunk if kind == "teacher" else None})
