r"""Speed of DP-IQA in JAX against the PyTorch original: one JSON line per measurement.

  python -m launch.benchmark --size=tiny --torch --ratio --steps=3          # CPU: ~5 minutes
  python -m launch.benchmark --size=full --torch --ratio                    # one GPU
  python -m launch.benchmark --size=full --only=student_infer --torch --batch_size=4 --steps=5

Measurements (--only, comma separated; default all): teacher_infer, teacher_train,
student_infer, student_train, input_pipeline (this project's Grain pipeline on the host CPU; its
`framework` is "jax"), teacher_score and student_score (a random model saved as a bundle and used
as `launch.score` uses it: `Scorer.load`, then PNG files read, decoded and scored; img/s and the
process's peak RSS at each of --score_batches, each batch size in a process of its own:

  python -m launch.benchmark --size=full --only=teacher_score,student_score --steps=2 --warmup=1
). On CPU most of the time is XLA compiling. `--size=tiny`: parity.py's tiny SD configs, a small
adapter and QFD, EfficientNet-B0, 64x64, batch 2. `--size=full`: SD 1.5 + EfficientNet-B7 at
512x512, teacher batch 16, student batch 32. Weights are random. Each line carries `framework`,
`batch`, `resolution`, `img_per_s`, `step_ms` (median), `compile_s`, `peak_memory_bytes` (and
`peak_memory_kind`), `flops_per_image`, `tflops`, `mfu`, `peak_tflops`, `dtype`, `device`,
`weights` (dpiqa_jax/dev/benchmark.py explains each); teacher lines also `attention` and
`attention_query_chunk` (`--attention=xla|cudnn`, `--query_chunk`: how the UNet's attention runs,
dpiqa_jax.sd.attention.AttentionKernel; the default is the training configs'). `--ratio` adds
{"measurement", "speedup": jax img/s / torch img/s} lines. `--keep_going` reports a failed
measurement as {"measurement", "framework", "error"} and goes on (exit status 1).

`--onnxruntime` (needs onnx and onnxruntime) adds a student_infer line with `framework`
"onnxruntime": the same random student exported by `dpiqa_jax.onnx_export`, run by ONNX Runtime's
CPU provider on the same images (NCHW) with --onnxruntime_threads intra-op threads; `--ratio` then
adds {"measurement", "speedup_vs_onnxruntime"} lines. The CPU table of the README (JAX, PyTorch
eager, ONNX Runtime; B7 at 512, Lite0 at 224 with the authors' 64x64 map; batch 1 and 8):

  for b in 1 8; do
    python -m launch.benchmark --size=full --only=student_infer --torch --onnxruntime --ratio \
      --batch_size=$b --steps=3 --warmup=1
    python -m launch.benchmark --size=full --only=student_infer --torch --onnxruntime --ratio \
      --batch_size=$b --student_backbone=lite0 --resolution=224 --student_map_size=64
  done

The JAX student_infer line runs the student as scoring does, its BatchNorms folded into the
convolutions (`batch_norm`: "folded"); `--cpu_devices=2` splits JAX's CPU into two devices and the
batch over them (`devices` in the line), the README's two-device rows.

`--torch` (needs requirements-dev.txt) runs the same work in PyTorch in this process, before the
JAX program of each measurement; JAX then does not preallocate GPU memory
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set) so that both fit. For a per-program JAX
`peak_memory_bytes` on a GPU run one measurement per process (benchmarks/gpu_check.sh does).
"""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags

from dpiqa_jax.dev import benchmark
from dpiqa_jax.sd.attention import ATTENTION_IMPLEMENTATIONS, AttentionKernel

from . import cli

_SIZE = flags.DEFINE_enum("size", "tiny", benchmark.SIZES, "Model and batch sizes.")
_ONLY = flags.DEFINE_list("only", list(benchmark.MEASUREMENTS),
                          f"Measurements to run, of {benchmark.MEASUREMENTS}.")
_TORCH = flags.DEFINE_bool("torch", False, "Also run each model measurement in PyTorch.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "torch.compile the PyTorch models.")
_ONNXRUNTIME = flags.DEFINE_bool("onnxruntime", False, "Also run student_infer in ONNX Runtime "
                                 "(CPU) on the student exported to ONNX.")
_ONNXRUNTIME_THREADS = flags.DEFINE_integer("onnxruntime_threads", os.cpu_count() or 1,
                                            "ONNX Runtime intra-op threads.", lower_bound=1)
_RATIO = flags.DEFINE_bool("ratio", False, "Print jax / torch (and jax / onnxruntime) img/s "
                            "per measurement.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps before the timed ones.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Images per step for every measurement; 0: the "
                              "size's.", lower_bound=0)
cli.rename("batch", "batch_size")
_RESOLUTION = flags.DEFINE_integer("resolution", 0, "Image side (multiple of 64); 0: the size's.")
_STUDENT_BACKBONE = flags.DEFINE_string("student_backbone", "",
                                        "EfficientNet of the student (b0..b7, lite0..lite2); '': "
                                        "the size's.")
_STUDENT_MAP_SIZE = flags.DEFINE_integer("student_map_size", 0, "Side of the student's quality "
                                         "map (student-only runs; the resolution may then be any "
                                         "multiple of 32); 0: resolution / 8.", lower_bound=0)
_DTYPE = flags.DEFINE_enum("dtype", "auto", benchmark.DTYPES,
                           "Compute dtype; auto: bfloat16 on accelerators, float32 on CPU.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0,
                                  "MFU denominator; 0: 989 on H100/H200 in bf16, else no MFU.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and inputs.")
_INPUT_IMAGES = flags.DEFINE_integer("input_images", 64, "Distinct JPEGs of input_pipeline.")
_INPUT_THREADS = flags.DEFINE_integer("input_threads", 8, "Decoding threads of input_pipeline.")
_INPUT_PASSES = flags.DEFINE_integer("input_passes", 2, "Passes over the JPEGs of input_pipeline.")
_ATTENTION = flags.DEFINE_enum("attention", "xla", ATTENTION_IMPLEMENTATIONS,
                               "Teacher attention: XLA's, or cuDNN flash attention (NVIDIA, bf16).")
_QUERY_CHUNK = flags.DEFINE_integer("query_chunk", None, "Teacher attention queries per "
                                    "rematerialised chunk (xla only); 0: unchunked; default: the "
                                    "training config's with xla, 0 with cudnn.")
_SCORE_BATCHES = flags.DEFINE_list("score_batches", [str(b) for b in benchmark.SCORING_BATCHES],
                                    "Batch sizes of the scoring measurements, each measured in "
                                    "its own process.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 1, "Split JAX's CPU into this many devices and the JAX student_infer batch "
    "over them (as `launch.score --cpu_devices` splits a student's batches).", lower_bound=1)
_KEEP_GOING = flags.DEFINE_bool("keep_going", False,
                                "On a failed measurement print an error line, go on, exit 1.")


def check_measurements(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in benchmark.MEASUREMENTS]
    if unknown or not names:
        raise app.UsageError(f"--only={','.join(names)}: unknown {unknown}; choose from "
                             f"{benchmark.MEASUREMENTS}")
    return names


def input_pipeline_record(size: benchmark.BenchmarkSize) -> benchmark.Record:
    """The input pipeline's decode + resize figure, 1024x768 JPEGs -> size.resolution."""
    # Imported here, not above: the pipeline needs grain, TFDS and scikit-image (for the photo),
    # which the model measurements do not, and a GPU machine may lack them.
    from dpiqa_jax.data import images  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.dev import throughput  # pylint: disable=import-outside-toplevel
    rss_start = benchmark.peak_rss_bytes()
    side = size.resolution
    result = throughput.input_throughput(
        num_images=_INPUT_IMAGES.value, batch_size=size.teacher_batch,
        num_threads=_INPUT_THREADS.value, passes=_INPUT_PASSES.value,
        config=images.ImageConfig(height=side, width=side))
    return benchmark.Record(
        measurement=benchmark.INPUT_PIPELINE, framework="jax", batch=size.teacher_batch,
        resolution=side, img_per_s=result["pipeline_images_per_s"], step_ms=None,
        steps=None, compile_s=None,
        peak_memory_bytes=benchmark.peak_rss_bytes() - rss_start,
        peak_memory_kind="process_peak_rss_delta", dtype="float32",
        device=benchmark.cpu_device_name(), weights="none",
        extra={"pipeline": f"grain eval pipeline, {_INPUT_THREADS.value} threads",
               "jpeg_size": list(throughput.JPEG_SIZE),
               "single_thread_img_per_s": result["single_thread_images_per_s"],
               "single_thread_img_per_cpu_s": result["single_thread_images_per_cpu_s"]})


def model_records(measurement: str, settings: benchmark.RunSettings) -> list[benchmark.Record]:
    """The JAX record of `measurement`, preceded by the PyTorch one with --torch."""
    torch_record = None
    if _TORCH.value:
        # Imported only here: the PyTorch reference needs the dev requirements.
        from dpiqa_jax.dev import torch_benchmark  # pylint: disable=import-outside-toplevel
        torch_record = _measured(measurement, "torch", lambda: torch_benchmark.measure_torch(
            measurement, settings, compile_model=_TORCH_COMPILE.value))
    jax_record = _measured(measurement, "jax",
                           lambda: benchmark.measure_jax(measurement, settings))
    others = [] if torch_record is None else [torch_record]
    if _ONNXRUNTIME.value and measurement == benchmark.STUDENT_INFER:
        others.append(_measured(measurement, benchmark.ONNXRUNTIME, lambda: (
            benchmark.measure_onnxruntime(settings, _ONNXRUNTIME_THREADS.value))))
    if isinstance(jax_record, benchmark.Record):
        for other in others:  # same model, same work: the count of the JAX program
            if isinstance(other, benchmark.Record):
                other.flops_per_image = jax_record.flops_per_image
                other.extra["flops_source"] = jax_record.extra["flops_source"]
    return [jax_record, *others]


def _measured(measurement: str, framework: str, measure: Callable[[], benchmark.Record]
              ) -> benchmark.Record | dict[str, str]:
    """`measure()`, or with --keep_going an error line in its place when it raises."""
    try:
        return measure()
    except Exception as error:  # pylint: disable=broad-exception-caught  # reported, not hidden
        if not _KEEP_GOING.value:
            raise
        return {"measurement": measurement, "framework": framework,
                "error": f"{type(error).__name__}: {error}"}


def scoring_batches() -> list[int]:
    try:
        batches = [int(b) for b in _SCORE_BATCHES.value]
    except ValueError as error:
        raise app.UsageError(f"--score_batches={','.join(_SCORE_BATCHES.value)}: {error}")
    if not batches or min(batches) < 1:
        raise app.UsageError("--score_batches needs positive batch sizes")
    return batches


def scoring_command(measurement: str, batch: int) -> list[str]:
    """This program measuring one scoring configuration, with this run's other flags."""
    shared = [f"--size={_SIZE.value}", f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
              f"--seed={_SEED.value}", f"--resolution={_RESOLUTION.value}",
              f"--student_backbone={_STUDENT_BACKBONE.value}"]
    return [sys.executable, "-m", "launch.benchmark", f"--only={measurement}",
            f"--score_batches={batch}", *shared]


def scoring_records(measurement: str, batches: list[int], several: bool
                    ) -> list[benchmark.Record | dict[str, str]]:
    """One line per batch size: measured here if it is the only scoring configuration of the
    run, else each in a child process (peak RSS is a per-process figure)."""
    if not several:
        size = benchmark.benchmark_size(_SIZE.value, resolution=_RESOLUTION.value,
                                        student_backbone=_STUDENT_BACKBONE.value)
        with tempfile.TemporaryDirectory(prefix="dpiqa-benchmark-") as directory:
            return [_measured(measurement, "jax", lambda: benchmark.measure_scoring(
                measurement, size, batches[0], _STEPS.value, _WARMUP.value, _SEED.value,
                directory))]
    results = []
    for batch in batches:
        child = subprocess.run(scoring_command(measurement, batch), capture_output=True,
                               text=True, check=False)
        lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        if child.returncode == 0 and lines:
            results.append(json.loads(lines[-1]))
        else:
            results.append({"measurement": measurement, "framework": "jax", "batch": batch,
                            "error": child.stderr.strip().splitlines()[-1] if child.stderr
                            else f"exit status {child.returncode}"})
    return results


def _line(record: benchmark.Record | dict[str, Any]) -> str:
    return record.to_json() if isinstance(record, benchmark.Record) else json.dumps(record)


def _attention_kernel(config_query_chunk: int) -> AttentionKernel:
    chunk = _QUERY_CHUNK.value
    if chunk is None:
        chunk = config_query_chunk if _ATTENTION.value == "xla" else 0
    return AttentionKernel(_ATTENTION.value, chunk)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    measurements = check_measurements(_ONLY.value)
    if _ONNXRUNTIME.value and benchmark.STUDENT_INFER not in measurements:
        raise app.UsageError(f"--onnxruntime measures {benchmark.STUDENT_INFER} only; add it "
                             f"to --only")
    if _STUDENT_MAP_SIZE.value and any(m.startswith("teacher") for m in measurements):
        raise app.UsageError("--student_map_size is for student-only runs (the teacher's map is "
                             "resolution / 8)")
    if _TORCH.value:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if _CPU_DEVICES.value > 1:
        # Before anything starts JAX's CPU backend (jax_platform below does).
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    size = benchmark.benchmark_size(_SIZE.value, resolution=_RESOLUTION.value,
                                    student_backbone=_STUDENT_BACKBONE.value, batch=_BATCH.value,
                                    student_map_size=_STUDENT_MAP_SIZE.value)
    if size.student_batch % _CPU_DEVICES.value:
        raise app.UsageError(f"--cpu_devices={_CPU_DEVICES.value} must divide the student's "
                             f"batch ({size.student_batch})")
    teacher_training = cli.config_module("teacher").get_config("koniq10k")
    settings = benchmark.RunSettings(
        size=size, dtype=benchmark.compute_dtype(_DTYPE.value, benchmark.jax_platform()),
        steps=_STEPS.value, warmup=_WARMUP.value, seed=_SEED.value,
        peak_tflops=_PEAK_TFLOPS.value or None, teacher_training=teacher_training,
        student_training=cli.config_module("student").get_config("koniq10k"),
        attention=_attention_kernel(teacher_training.attention.query_chunk),
        student_infer_devices=_CPU_DEVICES.value)
    results = []
    batches = scoring_batches()
    scoring = [m for m in measurements if m in benchmark.SCORING_MEASUREMENTS]
    for measurement in measurements:
        if measurement == benchmark.INPUT_PIPELINE:
            new = [_measured(measurement, "jax", lambda: input_pipeline_record(size))]
        elif measurement in benchmark.SCORING_MEASUREMENTS:
            new = scoring_records(measurement, batches, len(scoring) * len(batches) > 1)
        else:
            new = model_records(measurement, settings)
        for result in new:
            print(_line(result), flush=True)
        results.extend(new)
    records = [r for r in results if isinstance(r, benchmark.Record)]
    relayed = [r for r in results if isinstance(r, dict) and "error" not in r]
    if _RATIO.value:
        for line in benchmark.speedups(records):
            print(json.dumps(line), flush=True)
    if len(records) + len(relayed) < len(results):
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
