"""The speed benchmark (`python -m launch.benchmark`): its JSON lines at tiny size, JAX and torch.

The launcher runs in a subprocess (its absl flags share names with other launchers'), with XLA's
backend optimisations off: the records are checked, not the speed, and that halves the compile
time. Even so XLA:CPU needs over a minute for the tiny teacher's and the B0 student's train
steps, so those two measurements are a `slow` test.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from dpiqa_jax.dev import benchmark

from helpers import REPO_ROOT, run_module

COMMON_KEYS = {"measurement", "framework", "batch", "resolution", "img_per_s", "step_ms",
               "steps", "compile_s", "peak_memory_bytes", "peak_memory_kind", "flops_per_image",
               "tflops", "mfu", "peak_tflops", "dtype", "device", "weights"}
FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true")
FAST_ARGS = ["--only=teacher_infer,student_infer,input_pipeline", "--input_images=8",
             "--input_threads=2", "--input_passes=1"]


def run_launcher(*args: str, expected_status: int = 0) -> list[dict]:
    """`launch.benchmark.main` with `args`; its JSON lines."""
    script = ("from absl import app\nfrom launch import benchmark\n"
              "app.run(benchmark.main, argv=['benchmark', *" + repr(list(args)) + "])\n")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}"})
    assert result.returncode == expected_status, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def check_model_record(record: dict) -> None:
    name = f"{record['measurement']}/{record['framework']}"
    assert COMMON_KEYS <= set(record), (name, COMMON_KEYS - set(record))
    assert record["framework"] in ("jax", "torch"), name
    assert record["batch"] == 2 and record["resolution"] == 64 and record["steps"] == 2, name
    assert record["img_per_s"] > 0 and math.isfinite(record["img_per_s"]), name
    assert record["step_ms"] > 0 and math.isclose(
        record["img_per_s"], 1e3 * record["batch"] / record["step_ms"], rel_tol=1e-9), name
    # XLA counts the JAX program; the torch line reuses that count for the same work.
    assert 1e6 < record["flops_per_image"] < 1e11, name
    assert math.isclose(record["tflops"], record["flops_per_image"] * record["img_per_s"] / 1e12,
                        rel_tol=1e-9), name
    assert record["mfu"] is None and record["peak_tflops"] is None, name  # CPU: no stated peak
    assert record["peak_memory_kind"] == "process_peak_rss_delta", name
    assert record["peak_memory_bytes"] >= 0, name
    assert record["dtype"] == "float32" and record["device"].startswith("cpu"), name
    assert record["weights"] == "random", name
    if record["framework"] == "jax":
        assert record["compile_s"] > 0 and record["compiled_memory_bytes"] > 0, name
    else:
        assert record["compile_s"] is None and record["torch_compile"] is False, name
    if record["measurement"].startswith("student"):
        assert record["student_backbone"] == "b0", name
        if record["framework"] == "torch":
            assert record["torch_student"] in ("torchvision", "reference"), name


def check_ratios(lines: list[dict], measurements: list[str]) -> None:
    records = {(r["measurement"], r["framework"]): r for r in lines if "framework" in r}
    ratios = {r["measurement"]: r for r in lines if "speedup" in r}
    assert sorted(ratios) == sorted(measurements)
    for name, ratio in ratios.items():
        expected = records[name, "jax"]["img_per_s"] / records[name, "torch"]["img_per_s"]
        assert math.isclose(ratio["speedup"], expected, rel_tol=1e-9), name


def test_inference_and_input_pipeline_lines_for_both_frameworks():
    lines = run_launcher("--size=tiny", "--torch", "--ratio", "--steps=2", "--warmup=1",
                         *FAST_ARGS)
    models = [r for r in lines if r.get("measurement") in benchmark.MODEL_MEASUREMENTS
              and "framework" in r]
    assert sorted((r["measurement"], r["framework"]) for r in models) == [
        ("student_infer", "jax"), ("student_infer", "torch"),
        ("teacher_infer", "jax"), ("teacher_infer", "torch")]
    for record in models:
        check_model_record(record)
    teacher = {r["framework"]: r for r in models if r["measurement"] == "teacher_infer"}
    assert teacher["jax"]["context_tokens"] == teacher["torch"]["context_tokens"] == 1485
    # The training configs' attention: XLA, queries in chunks of 1024 (64x64 images: 64 tokens).
    assert (teacher["jax"]["attention"], teacher["jax"]["attention_query_chunk"]) == ("xla", 1024)
    assert teacher["torch"]["flops_per_image"] == teacher["jax"]["flops_per_image"]
    check_ratios(lines, ["teacher_infer", "student_infer"])

    (pipeline,) = [r for r in lines if r.get("measurement") == "input_pipeline"]
    assert COMMON_KEYS <= set(pipeline)
    assert pipeline["img_per_s"] > 0 and pipeline["single_thread_img_per_s"] > 0
    assert pipeline["jpeg_size"] == [1024, 768] and pipeline["resolution"] == 64
    assert pipeline["weights"] == "none" and pipeline["steps"] is None


def test_keep_going_reports_a_failed_framework_and_exits_1():
    """The ONNX export is float32 only: in a bfloat16 run its line is an error."""
    lines = run_launcher("--size=tiny", "--onnxruntime", "--keep_going", "--only=student_infer",
                         "--dtype=bfloat16", "--steps=1", "--warmup=0", expected_status=1)
    jax_line, onnx_line = lines
    assert jax_line["framework"] == "jax" and jax_line["img_per_s"] > 0
    assert jax_line["dtype"] == "bfloat16"
    assert onnx_line["framework"] == "onnxruntime" and "float32" in onnx_line["error"]


@pytest.mark.slow
def test_train_step_lines_for_both_frameworks():
    lines = run_launcher("--size=tiny", "--torch", "--ratio", "--steps=2", "--warmup=1",
                         "--only=teacher_train,student_train")
    models = [r for r in lines if "framework" in r]
    assert sorted((r["measurement"], r["framework"]) for r in models) == [
        ("student_train", "jax"), ("student_train", "torch"),
        ("teacher_train", "jax"), ("teacher_train", "torch")]
    for record in models:
        check_model_record(record)
    check_ratios(lines, ["teacher_train", "student_train"])


# --------------------------------------------------------------------------- library pieces


def _record(framework: str, measurement: str, img_per_s: float) -> benchmark.Record:
    return benchmark.Record(
        measurement=measurement, framework=framework, batch=4, resolution=64,
        img_per_s=img_per_s, step_ms=4e3 / img_per_s, steps=3, compile_s=None,
        peak_memory_bytes=None, peak_memory_kind=None, dtype="bfloat16", device="gpu:NVIDIA H200",
        flops_per_image=2e12, peak_tflops=989.0)


def test_record_derives_tflops_and_mfu():
    line = json.loads(_record("jax", "teacher_infer", 100.0).to_json())
    assert line["tflops"] == pytest.approx(200.0, rel=1e-12)
    assert line["mfu"] == pytest.approx(200.0 / 989.0, rel=1e-12)
    assert line["weights"] == "random"


def test_onnxruntime_line_runs_the_exported_student():
    lines = run_launcher("--size=tiny", "--only=student_infer", "--onnxruntime", "--ratio",
                         "--steps=2", "--warmup=1", "--onnxruntime_threads=1")
    records = {r["framework"]: r for r in lines if "framework" in r}
    assert sorted(records) == ["jax", "onnxruntime"]
    ours, theirs = records["jax"], records["onnxruntime"]
    assert ours["batch_norm"] == "folded"
    assert COMMON_KEYS <= set(theirs) and theirs["onnxruntime_threads"] == 1
    assert theirs["batch"] == 2 and theirs["resolution"] == 64 and theirs["img_per_s"] > 0
    assert theirs["flops_per_image"] == ours["flops_per_image"]
    (ratio,) = [r for r in lines if "speedup_vs_onnxruntime" in r]
    assert math.isclose(ratio["speedup_vs_onnxruntime"],
                        ours["img_per_s"] / theirs["img_per_s"], rel_tol=1e-9)


def test_cpu_devices_split_the_jax_student_infer_batch():
    lines = {d: run_launcher("--size=tiny", "--only=student_infer", "--steps=2", "--warmup=1",
                             f"--cpu_devices={d}") for d in (1, 2)}
    (one,), (two,) = lines[1], lines[2]
    assert (one["devices"], two["devices"]) == (1, 2)
    check_model_record(two)
    # XLA counts one device's share; the line counts the whole batch's work.
    assert two["flops_per_image"] == one["flops_per_image"]


def test_onnxruntime_needs_student_infer_and_student_map_size_a_student_only_run():
    result = run_module("launch.benchmark", "--only=teacher_infer", "--onnxruntime")
    assert result.returncode != 0 and "--onnxruntime measures student_infer" in result.stderr
    size = benchmark.benchmark_size("full", resolution=224, student_backbone="lite0",
                                    student_map_size=64)
    assert size.student.map_size == 64 and size.resolution == 224
    with pytest.raises(ValueError, match="multiple of 64"):
        benchmark.benchmark_size("full", resolution=224)


def test_speedups_pair_frameworks_per_measurement():
    records = [_record("jax", "teacher_infer", 150.0), _record("torch", "teacher_infer", 75.0),
               _record("jax", "student_infer", 10.0)]
    assert list(benchmark.speedups(records)) == [
        {"measurement": "teacher_infer", "speedup": 2.0, "jax_img_per_s": 150.0,
         "torch_img_per_s": 75.0}]


def test_peak_tflops_and_dtype_defaults():
    assert benchmark.default_peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert benchmark.default_peak_tflops("cuda:NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert benchmark.default_peak_tflops("NVIDIA H200", "float32") is None
    assert benchmark.default_peak_tflops("cpu", "bfloat16") is None
    assert benchmark.compute_dtype("auto", "cpu") == "float32"
    assert benchmark.compute_dtype("auto", "gpu") == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        benchmark.compute_dtype("float16", "gpu")


def test_sizes():
    full = benchmark.benchmark_size("full")
    assert (full.resolution, full.teacher_batch, full.student_batch) == (512, 16, 32)
    assert full.teacher.qfd.map_size == full.student.map_size == 64
    assert full.student.backbone == "b7" and full.num_prompts == 1485
    tiny = benchmark.benchmark_size("tiny", resolution=128, student_backbone="b1", batch=3)
    assert tiny.teacher.qfd.map_size == tiny.student.map_size == 16
    assert (tiny.student.backbone, tiny.batch("teacher_train"), tiny.batch("student_infer")) == (
        "b1", 3, 3)
    with pytest.raises(ValueError, match="multiple of 64"):
        benchmark.benchmark_size("tiny", resolution=96)
    with pytest.raises(ValueError, match="'huge'"):
        benchmark.benchmark_size("huge")


def test_median_step_seconds_runs_warmup_untimed():
    calls = []
    seconds = benchmark.median_step_seconds(lambda: calls.append(1), steps=3, warmup=2)
    assert len(calls) == 5 and 0 <= seconds < 1


@pytest.mark.parametrize("measurement", benchmark.SCORING_MEASUREMENTS)
def test_scoring_line_scores_files_with_a_loaded_bundle(measurement, tmp_path):
    size = benchmark.benchmark_size("tiny")
    record = benchmark.measure_scoring(measurement, size, batch=2, steps=1, warmup=0, seed=0,
                                       directory=str(tmp_path))
    line = json.loads(record.to_json())
    assert line["measurement"] == measurement and line["batch"] == 2
    assert line["img_per_s"] > 0 and line["img_per_s"] == pytest.approx(2e3 / line["step_ms"])
    assert line["peak_memory_kind"] == "process_peak_rss"
    assert 0 < line["peak_memory_bytes"] <= benchmark.peak_rss_bytes()
    assert sorted(os.listdir(tmp_path)) == sorted(["0.png", "1.png", measurement.split("_")[0]])
