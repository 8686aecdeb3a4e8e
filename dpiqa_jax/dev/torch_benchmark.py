"""The PyTorch side of the speed benchmark (dev only; the JAX side and the record: benchmark.py).

The same work as the JAX programs, on the authors' PyTorch architecture:

* teacher: `TorchTeacher` (diffusers' `AutoencoderKL` encoder, `UNet2DConditionModel` with its
  default SDPA attention, `FullAdapter`; the authors' text adapter and QFD), eager, NCHW;
* student: torchvision's `efficientnet_bN` features when torchvision is importable, else
  `TorchEfficientNet` (record field `torch_student`), with the authors' head.

bf16 runs under `torch.autocast` over fp32 weights (the authors trained with fp16 autocast); cuDNN
picks its fastest convolution algorithms (`cudnn.benchmark`). Train steps: Adam with the training
config's hyper-parameters on what the authors train (all but the VAE; the whole student), MSE
losses as in `dpiqa_jax.train.steps`. `torch_compile` wraps the model in `torch.compile`; its
`compile_s` is then the first call's time, else null (eager has nothing to compile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dpiqa_jax.dev import benchmark, torch_models


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return benchmark.cpu_device_name()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """[B, H, W, C] numpy -> [B, C, H, W] torch on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


def _adam(parameters, training) -> torch.optim.Adam:
    opt = training.optimizer
    if opt.name != "adam" or opt.weight_decay or opt.clip_norm:
        raise ValueError(f"the torch train step implements plain Adam; the training config has "
                         f"{opt.name!r} with weight_decay={opt.weight_decay}, "
                         f"clip_norm={opt.clip_norm}")
    return torch.optim.Adam(parameters, lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                            eps=opt.eps)


@dataclasses.dataclass
class TorchProgram:
    """One call of `run_step` runs the measured work once and synchronizes."""

    run_step: Callable[[], Any]
    extra: dict[str, Any]


def _teacher_program(settings: benchmark.RunSettings, device: torch.device, train: bool,
                     compile_model: bool) -> TorchProgram:
    size = settings.size
    inputs = benchmark.random_inputs(size, size.teacher_batch, settings.seed)
    images = _nchw(inputs["image"], device)
    prompts = torch.from_numpy(inputs["prompts"]).to(device)
    model = torch_models.build_torch_teacher(size.unet, size.vae, size.teacher,
                                             seed=settings.seed, perturb=False, trainable=train,
                                             device=device)
    forward = torch.compile(model) if compile_model else model
    extra = {"context_tokens": size.num_prompts}
    if not train:
        def infer():
            with torch.inference_mode(), _autocast(device, settings.dtype):
                forward(images, prompts)
            _synchronize(device)
        return TorchProgram(infer, extra)

    model.train()
    mos = torch.from_numpy(inputs["mos_normalized"]).to(device)
    optimizer = _adam(list(model.trainable_parameters()), settings.teacher_training)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, settings.dtype):
            score, _ = forward(images, prompts)
        F.mse_loss(score[:, 0].float(), mos).backward()
        optimizer.step()
        _synchronize(device)
    return TorchProgram(train_step, extra)


def _student_program(settings: benchmark.RunSettings, device: torch.device, train: bool,
                     compile_model: bool) -> TorchProgram:
    size = settings.size
    inputs = benchmark.random_inputs(size, size.student_batch, settings.seed)
    images = _nchw(inputs["image"], device)
    model, source = torch_models.build_torch_student(size.student, seed=settings.seed,
                                                     device=device)
    forward = torch.compile(model) if compile_model else model
    extra = {"student_backbone": size.student.backbone, "torch_student": source}
    if not train:
        model.eval()

        def infer():
            with torch.inference_mode(), _autocast(device, settings.dtype):
                forward(images)
            _synchronize(device)
        return TorchProgram(infer, extra)

    model.train()
    mos = torch.from_numpy(inputs["mos_normalized"]).to(device)
    teacher_map = _nchw(inputs["teacher_map"], device)
    training = settings.student_training
    optimizer = _adam(model.parameters(), training)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, settings.dtype):
            score, quality_map = forward(images)
        loss = (training.loss.score_weight * F.mse_loss(score.float(), mos)
                + training.loss.map_weight * F.mse_loss(quality_map.float(), teacher_map))
        loss.backward()
        optimizer.step()
        _synchronize(device)
    return TorchProgram(train_step, extra)


def torch_program(measurement: str, settings: benchmark.RunSettings, device: torch.device,
                  compile_model: bool) -> TorchProgram:
    builders = {
        benchmark.TEACHER_INFER: (_teacher_program, False),
        benchmark.TEACHER_TRAIN: (_teacher_program, True),
        benchmark.STUDENT_INFER: (_student_program, False),
        benchmark.STUDENT_TRAIN: (_student_program, True),
    }
    if measurement not in builders:
        raise ValueError(f"unknown model measurement {measurement!r}; expected one of "
                         f"{sorted(builders)}")
    build, train = builders[measurement]
    return build(settings, device, train, compile_model)


class _TorchMemoryProbe:
    """torch's peak allocated bytes on CUDA (reset here), else the process's peak-RSS growth."""

    def __init__(self, device: torch.device):
        self._device = device
        self._rss_start = benchmark.peak_rss_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def result(self) -> tuple[int, str]:
        if self._device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self._device)), "torch_max_memory_allocated"
        return benchmark.peak_rss_bytes() - self._rss_start, "process_peak_rss_delta"


def measure_torch(measurement: str, settings: benchmark.RunSettings, *,
                  compile_model: bool = False,
                  flops_per_image: float | None = None) -> benchmark.Record:
    """Times one measurement in PyTorch; `flops_per_image` is the JAX program's (same work)."""
    device = torch_device()
    torch.backends.cudnn.benchmark = True
    probe = _TorchMemoryProbe(device)
    program = torch_program(measurement, settings, device, compile_model)
    start = time.perf_counter()
    program.run_step()  # the first call: torch.compile compiles here, cuDNN picks algorithms
    first_call_s = time.perf_counter() - start
    step_s = benchmark.median_step_seconds(program.run_step, settings.steps,
                                           max(settings.warmup - 1, 0))
    peak_bytes, peak_kind = probe.result()
    extra = {**program.extra, "torch_compile": compile_model,
             "cudnn_benchmark": device.type == "cuda", "torch_threads": torch.get_num_threads(),
             "flops_source": None if flops_per_image is None else "jax_xla_cost_analysis"}
    del program
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the device's memory to the next program (JAX's, too)
    batch = settings.size.batch(measurement)
    name = _device_name(device)
    return benchmark.Record(
        measurement=measurement, framework="torch", batch=batch,
        resolution=settings.size.resolution, img_per_s=batch / step_s, step_ms=1e3 * step_s,
        steps=settings.steps, compile_s=first_call_s if compile_model else None,
        peak_memory_bytes=peak_bytes, peak_memory_kind=peak_kind, dtype=settings.dtype,
        device=name, flops_per_image=flops_per_image,
        peak_tflops=settings.peak_tflops or benchmark.default_peak_tflops(name, settings.dtype),
        extra=extra)
