"""The whole method end to end on one CPU, on data that ships inside installed packages.

A tiny teacher (random-init miniature SD: no pretrained diffusion prior is involved, so this shows
the machinery, not DP-IQA's accuracy) is trained on the set of `dpiqa_jax.demo_data`, whose labels
are a full-reference quality (multi-scale SSIM against the pristine photograph, 0..100); a student
with EfficientNet-Lite0's real ImageNet weights is trained on the same labels (distilled from the
teacher's maps too when `map_weight` > 0; the default is 0, see DemoSettings); both are evaluated
on photographs neither saw. The task is "predict the full-reference quality without the reference".
The report folder holds metrics.json, scatter plots, the quality-map study of
`dpiqa_jax.demo_maps`, both models and a Markdown summary. `run_seeds` repeats the demo over
several photo splits and reports the median and spread of the held-out figures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from dpiqa_jax import demo_data, demo_maps
from dpiqa_jax.eval import metrics as metrics_lib
from dpiqa_jax.eval import protocol
from dpiqa_jax.scorer import Scorer
from dpiqa_jax.train import run

MODELS = ("teacher", "student")
MAP_FIGURE = "quality_maps.png"
FIGURE_PHOTOS = 2  # held-out photographs drawn in the figure; the numbers use all of them


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What a demo run does (README, Demo: what was tried, on the validation photographs).

    EfficientNet-Lite0's ImageNet BatchNorm statistics were kept with momentum 0.01, while the
    student is fed [0, 1] pixels (as the authors feed theirs): at that momentum its running
    statistics lag the training batches for hundreds of steps, so inference-mode scores stay off.
    The demo's student uses momentum 0.1 (torch convention; 0.9 in Flax's), so the statistics
    follow the demo's images within a few dozen steps. Its score head starts at the training
    labels' mean (`student.score_bias`): from torch's initialisation (score near 0, labels near
    0.8) the student spent its steps moving the output and did not even rank its training
    images. Each photograph gives `tiles` x `tiles` views (more contents, less downscaling);
    training images are flipped at random (the labels do not change under a flip)."""

    image_size: int = 128
    tiles: int = 2
    hflip: bool = True
    teacher_steps: int = 80
    student_steps: int = 320
    batch_size: int = 16
    test_photos: int = 4
    val_photos: int = 3
    seed: int = 0
    teacher_learning_rate: float = 1e-3
    student_learning_rate: float = 1e-3
    # The teacher is random-init: on seed 0's validation photographs its maps at weight 0.1
    # held the student at SRCC 0.38, without them it reached 0.60 (240 steps), so the demo's
    # student learns from the labels alone and no teacher map is computed.
    map_weight: float = 0.0
    student_bn_momentum: float = 0.1
    evaluations: int = 8  # validations per run; the best one is kept


def _common_overrides(config: ml_collections.ConfigDict, settings: DemoSettings, steps: int,
                      learning_rate: float) -> ml_collections.ConfigDict:
    config.seed = settings.seed
    config.data.demo_side = settings.image_size
    config.data.demo_tiles = settings.tiles
    config.data.hflip = settings.hflip
    config.data.image_size = settings.image_size
    config.data.demo_test_photos = settings.test_photos
    config.data.demo_val_photos = settings.val_photos
    config.data.split = f"seed{settings.seed}"
    config.batch_size = settings.batch_size
    config.total_steps = steps
    config.optimizer.learning_rate = learning_rate
    config.schedule.milestone_steps = (int(steps * 0.8),)
    config.log_every_steps = max(1, steps // 20)
    config.eval_every_steps = max(1, steps // settings.evaluations)
    config.checkpoint_every_steps = config.eval_every_steps
    config.progress_bar = True
    return config


def teacher_config(tiny: ml_collections.ConfigDict,
                   settings: DemoSettings) -> ml_collections.ConfigDict:
    """The demo's teacher run: the `tiny` teacher config with the demo's settings."""
    return _common_overrides(tiny.copy_and_resolve_references(), settings,
                             settings.teacher_steps, settings.teacher_learning_rate)


def student_config(tiny: ml_collections.ConfigDict, settings: DemoSettings,
                   teacher_dir: str) -> ml_collections.ConfigDict:
    """The demo's student run: the `tiny` student config, with `teacher_dir`'s maps at the
    settings' `map_weight`."""
    config = _common_overrides(tiny.copy_and_resolve_references(), settings,
                               settings.student_steps, settings.student_learning_rate)
    config.teacher_checkpoint = teacher_dir
    config.loss.map_weight = settings.map_weight
    config.student.bn_momentum = settings.student_bn_momentum
    config.student.score_bias = float(np.mean([r.mos_normalized
                                               for r in split_records(settings)["train"]]))
    return config


def _copy_evaluation(workdir: str, out: str, name: str) -> dict[str, Any]:
    """Copies the run's test evaluation (metrics, scatter plot, predictions) into the report."""
    evaluation = os.path.join(workdir, run.TEST_EVAL_DIR)
    target = os.path.join(out, f"{name}_test")
    shutil.copytree(evaluation, target, dirs_exist_ok=True)
    return protocol.read_metrics(target)


def _read_scores(out: str, name: str) -> dict[str, float]:
    """image name -> the model's score, from the report's copy of its test predictions."""
    path = os.path.join(out, f"{name}_test", protocol.PREDICTIONS_FILE)
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(f)}


def ordering_figures(records: Sequence[demo_data.DemoRecord], scores: Mapping[str, float]
                     ) -> dict[str, float]:
    """Where the held-out SRCC is lost: within one content, or between contents.

    within_view_srcc: the mean, over every view and distortion kind, of the SRCC over the view's
    pristine image and that kind's levels (does the model order the levels on one content?).
    offset_removed_srcc: the SRCC over all images after each view's mean prediction and mean label
    are subtracted (the ranking left once each content's overall level is given). Both near 1
    with a lower SRCC means the model misjudges how good a content looks, not the distortions.
    """
    by_view: dict[str, list[demo_data.DemoRecord]] = {}
    for record in records:
        by_view.setdefault(f"{record.photo}/{record.view}", []).append(record)
    within, centred_scores, centred_labels = [], [], []
    for views in by_view.values():
        predicted = np.asarray([scores[r.name] for r in views])
        labels = np.asarray([r.mos for r in views])
        kinds = np.asarray([r.distortion for r in views])
        for kind in demo_data.DISTORTIONS:
            chosen = (kinds == kind) | (kinds == "pristine")
            within.append(metrics_lib.srcc(predicted[chosen], labels[chosen]))
        centred_scores.append(predicted - predicted.mean())
        centred_labels.append(labels - labels.mean())
    return {"within_view_srcc": float(np.nanmean(within)) if np.isfinite(within).any()
            else float("nan"),
            "offset_removed_srcc": metrics_lib.srcc(np.concatenate(centred_scores),
                                                    np.concatenate(centred_labels))}


def split_records(settings: DemoSettings) -> dict[str, list[demo_data.DemoRecord]]:
    """This seed's train/val/test records, as the training runs split them."""
    return demo_data.split_records(settings.image_size, settings.tiles, settings.test_photos,
                                   settings.val_photos, settings.seed)


def held_out_photos(settings: DemoSettings) -> list[str]:
    """The test photographs of this seed's split (those the training runs hold out)."""
    return sorted({r.photo for r in split_records(settings)["test"]})


def study_maps(model_dirs: dict[str, str], settings: DemoSettings, out: str
               ) -> dict[str, dict[str, float]]:
    """The half-distortion map study on the held-out photographs: numbers per model, and the
    figure (its first FIGURE_PHOTOS photographs) at out/MAP_FIGURE."""
    photos = demo_data.packaged_photos(settings.image_size)
    test = held_out_photos(settings)
    cases = demo_maps.make_cases({p: photos[p] for p in test}, seed=settings.seed)
    predictions = {}
    for name, directory in model_dirs.items():
        result = Scorer.load(directory).predict([c.image for c in cases], return_maps=True)
        predictions[name] = (result.score, result.quality_map)
    shown = [i for i, c in enumerate(cases) if c.photo in test[:FIGURE_PHOTOS]]
    demo_maps.draw_figure([cases[i] for i in shown],
                          {name: (scores[shown], maps[shown])
                           for name, (scores, maps) in predictions.items()},
                          os.path.join(out, MAP_FIGURE))
    return {name: demo_maps.map_statistics(cases, maps)
            for name, (_, maps) in predictions.items()}


def _map_term(settings: DemoSettings) -> str:
    if settings.map_weight:
        return f" plus {settings.map_weight} x the MSE to the teacher's quality maps"
    return (" alone: the random teacher's maps made the student worse on the validation "
            "photographs, so it is not distilled from them (map weight 0)")


def _summary(metrics: dict[str, Any], settings: DemoSettings) -> str:
    rows = "\n".join(f"| {name} | {metrics[name]['srcc']:.3f} | {metrics[name]['plcc']:.3f} | "
                     f"{metrics[name].get('krcc', float('nan')):.3f} |" for name in MODELS)
    ordering_rows = "\n".join(f"| {name} | {metrics['ordering'][name]['within_view_srcc']:.3f} | "
                              f"{metrics['ordering'][name]['offset_removed_srcc']:.3f} |"
                              for name in MODELS)
    kinds = [case[0] for case in demo_maps.HALF_CASES]
    map_rows = "\n".join(
        f"| {name} | " + " | ".join(f"{m['half_map_difference_by_distortion'][k]:+.4f}"
                                    for k in kinds)
        + f" | {m['half_map_abs_difference_in_spread']:.2f} | {m['map_spread']:.4f} "
        f"| {m['pristine_right_minus_left']:+.4f} |"
        for name, m in metrics["maps"].items())
    kind_header = " | ".join(f"{kind} {level}, {half}" for kind, level, half in
                             demo_maps.HALF_CASES)
    return f"""# dpiqa_jax demo report (seed {settings.seed})

**Labels**: a full-reference quality of each distorted image against its pristine photograph
(100 x the mean SSIM over 3 scales, computed with scikit-image), so the task is *predict the
full-reference quality without the reference*. Data: {settings.image_size}x{settings.image_size}
views of the photographs scikit-image and matplotlib ship (up to {settings.tiles}x{settings.tiles}
tiles of each one's central square), degraded by blur, noise, JPEG and contrast at
{demo_data.LEVELS} levels each. Splits by photograph: the {settings.test_photos}
test photographs ({", ".join(held_out_photos(settings))}) were never seen in training or model
selection; {settings.val_photos} others chose the checkpoint.

**Teacher**: a random-init *tiny* Stable-Diffusion-shaped teacher, {settings.teacher_steps} steps.
It has no pretrained diffusion prior, the thing DP-IQA's teacher is made of, so its figure says
nothing about DP-IQA's teacher: it is a small network trained from scratch on the demo's images.
**Student**: EfficientNet-Lite0 with its real ImageNet weights, {settings.student_steps} steps on
the labels{_map_term(settings)}, its score head starting at the training labels' mean.

Held-out photographs, best checkpoint by validation SRCC:

| model | SRCC | PLCC | KRCC |
|---|---|---|---|
{rows}

**Where the order is lost** (SRCC on the same held-out images): within one view, over its
pristine image and the levels of one distortion (mean over views and kinds); and over all
images once each view's mean prediction and mean label are subtracted. High figures here beside
a lower SRCC above mean the model orders the distortions of one content but misjudges how good
one content looks against another, which a no-reference model must guess from the content.

| model | within a view | view means removed |
|---|---|---|
{ordering_rows}

**Quality maps** (`{MAP_FIGURE}`): each held-out photograph pristine and with a distortion on one
half. Half difference = map mean over the distorted half - over the clean half, minus the same on
the pristine photograph's map (removes content and the fixed border pattern), mean per distortion
in map units; then the mean |half difference| over all
{metrics["maps"]["student"]["num_half_distorted"]} such images in units of the map's spread (its
standard deviation over the cells of a pristine image), and the pristine maps' right - left.

| model | {kind_header} | mean abs / spread | spread | pristine right - left |
|---|---|---|---|---|---|---|---|
{map_rows}

The maps are 8 x 8 features the score head reads, not trained to be low where the image is bad:
they can show *where* a model responds to a distortion, not how bad each region is.

Scatter plots: `teacher_test/scatter.png`, `student_test/scatter.png`. Models:
`teacher/best_model`, `student/best_model`. Wall time: {metrics["wall_seconds"] / 60:.1f} min.
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
    logging.info("demo [1/3]: training the tiny teacher (random-init miniature SD, not "
                 "pretrained), %d steps", settings.teacher_steps)
    teacher = run.train(teacher_config(tiny_configs["teacher"], settings),
                        os.path.join(out, "teacher"))
    logging.info("demo [2/3]: training the EfficientNet-Lite0 student (ImageNet weights), %d "
                 "steps, teacher map weight %g", settings.student_steps, settings.map_weight)
    student = run.train(student_config(tiny_configs["student"], settings,
                                       teacher.best_model_dir),
                        os.path.join(out, "student"))
    logging.info("demo [3/3]: held-out evaluation and the quality-map study")
    metrics: dict[str, Any] = {name: _copy_evaluation(os.path.join(out, name), out, name)
                               for name in MODELS}
    test_records = split_records(settings)["test"]
    metrics["ordering"] = {name: ordering_figures(test_records, _read_scores(out, name))
                           for name in MODELS}
    metrics["maps"] = study_maps({"teacher": teacher.best_model_dir,
                                  "student": student.best_model_dir}, settings, out)
    metrics["held_out_photos"] = held_out_photos(settings)
    metrics["settings"] = dataclasses.asdict(settings)
    metrics["wall_seconds"] = round(time.time() - started, 1)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(_summary(metrics, settings))
    return metrics


def seed_statistics(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """model -> {srcc_median, srcc_min, srcc_max, plcc_median, ...} over the seeds."""
    table = {}
    for name in MODELS:
        row = {}
        for metric in ("srcc", "plcc"):
            values = [m[name][metric] for m in per_seed.values()]
            row.update({f"{metric}_median": statistics.median(values),
                        f"{metric}_min": min(values), f"{metric}_max": max(values)})
        table[name] = row
    return table


def run_seeds(out: str, tiny_configs: Mapping[str, ml_collections.ConfigDict],
              settings: DemoSettings, seeds: Sequence[int]) -> dict[str, Any]:
    """The demo once per seed (another photo split and initialisation) in out/seed<N>; writes
    out/seeds.json with every seed's held-out figures and their median, min and max."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    per_seed = {seed: run_demo(os.path.join(out, f"seed{seed}"), tiny_configs,
                               dataclasses.replace(settings, seed=seed)) for seed in seeds}
    report = {"per_seed": {str(seed): {name: {k: m[name][k] for k in ("srcc", "plcc")}
                                       for name in MODELS}
                           for seed, m in per_seed.items()},
              "over_seeds": seed_statistics(per_seed),
              "wall_seconds": {str(seed): m["wall_seconds"] for seed, m in per_seed.items()}}
    with open(os.path.join(out, "seeds.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def format_figures(metrics: dict[str, Any]) -> str:
    """One line per model: held-out SRCC and PLCC."""
    return "\n".join(f"{name:8s} held-out SRCC {metrics[name]['srcc']:.3f}  PLCC "
                     f"{metrics[name]['plcc']:.3f}" for name in MODELS)


def format_seed_figures(report: dict[str, Any]) -> str:
    """Per model: the median over seeds and the range, SRCC and PLCC."""
    lines = []
    for name, row in report["over_seeds"].items():
        lines.append(f"{name:8s} over {len(report['per_seed'])} seeds: SRCC median "
                     f"{row['srcc_median']:.3f} (min {row['srcc_min']:.3f}, max "
                     f"{row['srcc_max']:.3f}); PLCC median {row['plcc_median']:.3f} (min "
                     f"{row['plcc_min']:.3f}, max {row['plcc_max']:.3f})")
    return "\n".join(lines)
