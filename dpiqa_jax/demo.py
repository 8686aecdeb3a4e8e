"""The whole method end to end on one CPU, on data that ships inside installed packages.

A tiny teacher (random-init miniature SD: no pretrained diffusion prior is involved, so this shows
the machinery, not DP-IQA's accuracy) is trained on the graded-distortion set of
`dpiqa_jax.demo_data`; a student with EfficientNet-Lite0's real ImageNet weights is distilled from
it; both are evaluated on photographs neither saw. The report folder holds metrics.json, scatter
plots, quality-map heatmaps, both models and a Markdown summary.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from dpiqa_jax import demo_data, heatmap
from dpiqa_jax.eval import protocol
from dpiqa_jax.scorer import Scorer
from dpiqa_jax.train import run

HEATMAP_PHOTOS = 2


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    image_size: int = 64
    teacher_steps: int = 300
    student_steps: int = 120
    batch_size: int = 16
    test_photos: int = 4
    val_photos: int = 2
    seed: int = 0


def _common_overrides(config: ml_collections.ConfigDict, settings: DemoSettings,
                      steps: int) -> ml_collections.ConfigDict:
    config.seed = settings.seed
    config.data.demo_side = settings.image_size
    config.data.image_size = settings.image_size
    config.data.demo_test_photos = settings.test_photos
    config.data.demo_val_photos = settings.val_photos
    config.data.split = f"seed{settings.seed}"
    config.batch_size = settings.batch_size
    config.total_steps = steps
    config.schedule.milestone_steps = (int(steps * 0.8),)
    config.log_every_steps = max(1, steps // 20)
    config.eval_every_steps = max(1, steps // 5)
    config.checkpoint_every_steps = max(1, steps // 5)
    config.progress_bar = True
    return config


def teacher_config(tiny: ml_collections.ConfigDict,
                   settings: DemoSettings) -> ml_collections.ConfigDict:
    """The demo's teacher run: the `tiny` teacher config with the demo's settings."""
    config = _common_overrides(tiny.copy_and_resolve_references(), settings,
                               settings.teacher_steps)
    config.optimizer.learning_rate = 1e-3
    return config


def student_config(tiny: ml_collections.ConfigDict, settings: DemoSettings,
                   teacher_dir: str) -> ml_collections.ConfigDict:
    """The demo's student run: the `tiny` student config distilled from `teacher_dir`."""
    config = _common_overrides(tiny.copy_and_resolve_references(), settings,
                               settings.student_steps)
    config.teacher_checkpoint = teacher_dir
    config.optimizer.learning_rate = 1e-3
    return config


def _copy_evaluation(workdir: str, out: str, name: str) -> dict[str, Any]:
    """Copies the run's test evaluation (metrics, scatter plot, predictions) into the report."""
    evaluation = os.path.join(workdir, run.TEST_EVAL_DIR)
    target = os.path.join(out, f"{name}_test")
    shutil.copytree(evaluation, target, dirs_exist_ok=True)
    return protocol.read_metrics(target)


def _test_photos(settings: DemoSettings) -> list[demo_data.DemoRecord]:
    records = demo_data.make_demo_records(side=settings.image_size, seed=0)
    parts = demo_data.split_by_photo(records, settings.test_photos, settings.val_photos,
                                     seed=settings.seed)
    return parts["test"]


def write_heatmaps(model_dirs: dict[str, str], settings: DemoSettings, path: str) -> str:
    """One figure: held-out images (pristine, level 3, level 5) and each model's quality map."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    records = _test_photos(settings)
    photos = sorted({r.photo for r in records})[:HEATMAP_PHOTOS]
    chosen = [r for r in records if r.photo in photos and r.level in (0, 3, 5)
              and r.distortion in ("pristine", "blur", "noise")]
    images = [np.asarray(Image.open(io.BytesIO(r.image)).convert("RGB")) for r in chosen]
    predictions = {name: Scorer.load(d).predict(images, return_maps=True)
                   for name, d in model_dirs.items()}
    columns = 1 + len(model_dirs)
    figure, axes = plt.subplots(len(chosen), columns, figsize=(2.6 * columns, 2.6 * len(chosen)),
                                squeeze=False)
    for row, (record, image) in enumerate(zip(chosen, images)):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"{record.distortion} {record.level}: label {record.mos:.0f}",
                               fontsize=8)
        for column, (name, result) in enumerate(predictions.items(), start=1):
            axes[row, column].imshow(heatmap.overlay(image, result.quality_map[row]))
            axes[row, column].set_title(f"{name}: {result.score[row]:.1f}", fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _summary(metrics: dict[str, Any], settings: DemoSettings, seconds: float) -> str:
    rows = "\n".join(f"| {name} | {m['srcc']:.3f} | {m['plcc']:.3f} "
                     f"| {m.get('krcc', float('nan')):.3f} |"
                     for name, m in metrics.items() if isinstance(m, dict) and "srcc" in m)
    return f"""# dpiqa_jax demo report

Teacher: a random-init *tiny* Stable-Diffusion-shaped teacher (no pretrained diffusion weights),
trained {settings.teacher_steps} steps. Student: EfficientNet-Lite0 with its real ImageNet weights,
distilled {settings.student_steps} steps from the teacher's quality maps and the labels.
Data: {settings.image_size}x{settings.image_size} versions of packaged photographs (scikit-image,
matplotlib) degraded by blur, noise, JPEG and contrast at 5 levels; the {settings.test_photos}
test photographs were never seen in training or model selection.

| model | SRCC | PLCC | KRCC |
|---|---|---|---|
{rows}

Scatter plots: `teacher_test/scatter.png`, `student_test/scatter.png`; quality maps:
`quality_maps.png`; models:
`teacher/best_model`, `student/best_model`. Wall time: {seconds / 60:.1f} min.
"""


def run_demo(out: str, tiny_configs: Mapping[str, ml_collections.ConfigDict],
             settings: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Trains teacher then student into `out`, evaluates both, writes the report; returns metrics.

    `tiny_configs`: the `tiny` training configs {"teacher": ..., "student": ...} (the launcher
    reads them from configs/), which the demo's settings override.
    """
    started = time.time()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    logging.info("demo: training the tiny teacher (random-init miniature SD, not pretrained)")
    teacher = run.train(teacher_config(tiny_configs["teacher"], settings),
                        os.path.join(out, "teacher"))
    logging.info("demo: distilling the EfficientNet-Lite0 student (ImageNet weights)")
    student = run.train(student_config(tiny_configs["student"], settings,
                                       teacher.best_model_dir),
                        os.path.join(out, "student"))
    metrics: dict[str, Any] = {
        "teacher": _copy_evaluation(os.path.join(out, "teacher"), out, "teacher"),
        "student": _copy_evaluation(os.path.join(out, "student"), out, "student"),
    }
    write_heatmaps({"teacher": teacher.best_model_dir, "student": student.best_model_dir},
                   settings, os.path.join(out, "quality_maps.png"))
    seconds = time.time() - started
    metrics["settings"] = dataclasses.asdict(settings)
    metrics["wall_seconds"] = round(seconds, 1)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(_summary(metrics, settings, seconds))
    return metrics
