"""DP-IQA end to end on one CPU in about ten minutes, on photographs that ship inside packages.

  python -m launch.demo                       # report in ./demo_out
  python -m launch.demo --output /tmp/demo --teacher_steps 100 --student_steps 100

Trains a tiny random-init teacher (a miniature of SD 1.5's structure, NOT pretrained), distils an
EfficientNet-Lite0 student (real ImageNet weights) from it, evaluates both on held-out photographs
and writes metrics.json, scatter plots, quality-map heatmaps, both models and summary.md.
"""

import os

from absl import app, flags, logging

from dpiqa_jax import demo

from . import cli

_OUT = flags.DEFINE_string("output", "demo_out", "Report folder.")
cli.rename("out", "output")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", demo.DemoSettings.teacher_steps,
                                      "Teacher training steps.")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", demo.DemoSettings.student_steps,
                                      "Student training steps.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", demo.DemoSettings.image_size,
                                   "Side of the demo images and of the model input.")
_SEED = flags.DEFINE_integer("seed", demo.DemoSettings.seed, "Split and initialisation seed.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = demo.DemoSettings(image_size=_IMAGE_SIZE.value, teacher_steps=_TEACHER_STEPS.value,
                                 student_steps=_STUDENT_STEPS.value, seed=_SEED.value)
    tiny_configs = {kind: cli.config_module(kind).get_config("tiny")
                    for kind in ("teacher", "student")}
    metrics = demo.run_demo(_OUT.value, tiny_configs, settings)
    for name in ("teacher", "student"):
        logging.info("%s on held-out photos: SRCC %.3f PLCC %.3f", name,
                     metrics[name]["srcc"], metrics[name]["plcc"])
    print(f"demo report: {os.path.abspath(_OUT.value)}")


if __name__ == "__main__":
    cli.run(main)
