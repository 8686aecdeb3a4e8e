"""DP-IQA end to end on one CPU, on photographs that ship inside packages.

  python -m launch.demo                       # report in ./demo_out
  python -m launch.demo --output /tmp/demo --teacher_steps 50 --student_steps 50
  python -m launch.demo --output /tmp/seeds --seeds 0,1,2   # three photo splits: median, range
  python -m launch.demo --map_weight 0.1      # the student distilled from the teacher's maps too

Labels are a full-reference quality (multi-scale SSIM of each distorted image against its pristine
photograph, 0..100): the models learn to predict it without the reference. Trains a tiny
random-init teacher (a miniature of SD 1.5's structure, NOT pretrained) and an EfficientNet-Lite0
student (real ImageNet weights; by default on the labels alone, as the random teacher's maps
made it worse on the validation photographs), evaluates both on held-out photographs
and writes metrics.json, scatter plots, the half-distortion quality-map study, both models and
summary.md. With --seeds, one such report per seed in OUT/seed<N> and OUT/seeds.json.
"""

import os

from absl import app, flags

from dpiqa_jax import demo

from . import cli

_OUT = flags.DEFINE_string("output", "demo_out", "Report folder.")
cli.rename("out", "output")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", demo.DemoSettings.teacher_steps,
                                      "Teacher training steps.")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", demo.DemoSettings.student_steps,
                                      "Student training steps.")
_MAP_WEIGHT = flags.DEFINE_float("map_weight", demo.DemoSettings.map_weight,
                                 "Weight of the MSE to the teacher's quality maps in the student's "
                                 "loss; 0 trains it on the labels alone (no teacher map computed).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", demo.DemoSettings.image_size,
                                   "Side of the demo images and of the model input.")
_SEED = flags.DEFINE_integer("seed", demo.DemoSettings.seed,
                             "Photo split and initialisation seed of a single run.")
_SEEDS = flags.DEFINE_list("seeds", [], "Run once per seed (e.g. 0,1,2) and report the median "
                           "and range of the held-out figures; replaces --seed.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        seeds = [int(seed) for seed in _SEEDS.value]
    except ValueError as error:
        raise app.UsageError(f"--seeds takes integers, got {_SEEDS.value}") from error
    settings = demo.DemoSettings(image_size=_IMAGE_SIZE.value, teacher_steps=_TEACHER_STEPS.value,
                                 student_steps=_STUDENT_STEPS.value, seed=_SEED.value,
                                 map_weight=_MAP_WEIGHT.value)
    tiny_configs = {kind: cli.config_module(kind).get_config("tiny")
                    for kind in ("teacher", "student")}
    if seeds:
        report = demo.run_seeds(_OUT.value, tiny_configs, settings, seeds)
        print(demo.format_seed_figures(report))
    else:
        metrics = demo.run_demo(_OUT.value, tiny_configs, settings)
        print(f"seed {settings.seed}, {len(metrics['held_out_photos'])} held-out photographs:")
        print(demo.format_figures(metrics))
    print(f"demo report: {os.path.abspath(_OUT.value)}")


if __name__ == "__main__":
    cli.run(main)
