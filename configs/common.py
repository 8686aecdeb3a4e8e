"""Config pieces shared by the teacher and student configs.

Every field any training run reads is defined here or in the model's config file, so a locked
config rejects a mistyped override (`--config.optimizer.learnig_rate=...`) instead of ignoring it.
"""

from __future__ import annotations

import ml_collections

# Builder names (dpiqa_jax.data.builders) of the config variants; `clive` is LIVE Challenge.
DATASETS = {
    "koniq10k": "koniq10k",
    "clive": "live_challenge",
    "spaq": "spaq",
    "flive": "flive",
    "kadid10k": "kadid10k",
    "agiqa3k": "agiqa3k",
    "iqa_folder": "iqa_folder",
}
TINY = "tiny"
VARIANTS = tuple(DATASETS) + (TINY,)


def check_variant(arg: str | None) -> str:
    """The variant named after the `:` of `--config=configs/x.py:VARIANT` (default koniq10k)."""
    variant = arg or "koniq10k"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    return variant


def data_config(variant: str) -> ml_collections.ConfigDict:
    """Where the images come from and how they become model inputs.

    `source='tfds'` reads a dataset built by `python -m launch.build_dataset` through a split
    file; `source='demo'` generates the small in-memory set of `dpiqa_jax.demo_data` (no files).
    """
    dataset = DATASETS.get(variant, "demo")
    return ml_collections.ConfigDict({
        "source": "demo" if variant == TINY else "tfds",
        "dataset": dataset,
        "data_dir": "~/tensorflow_datasets",
        "config_name": "",  # builder config; required for iqa_folder
        "split_file": f"splits/{dataset}/random.json",
        "split": "seed0",
        "image_size": 512,
        "resize_mode": "squash",
        "hflip": False,
        "random_crop": False,
        "num_threads": 8,
        "prefetch_images": 64,
        "eval_batch_size": 16,  # global, over all processes
        # demo source only: side of the generated photos, views per photograph side (tiles x
        # tiles), and photographs held out per part.
        "demo_side": 64,
        "demo_tiles": 1,
        "demo_test_photos": 3,
        "demo_val_photos": 3,
    })


def base_config(kind: str, variant: str) -> ml_collections.ConfigDict:
    """The fields common to teacher and student runs; the model files fill in the recipes."""
    config = ml_collections.ConfigDict()
    config.kind = kind
    config.variant = variant
    config.seed = 0
    config.data = data_config(variant)

    # Parallelism: batch over data x fsdp, parameters and optimizer state over fsdp.
    config.mesh = "data=-1,fsdp=1"
    config.fsdp_min_size = 2 ** 18  # tensors with fewer elements are replicated

    # Mixed precision: compute dtype, master copy of what trains, storage of what is frozen.
    config.dtype = "bfloat16"
    config.param_dtype = "float32"
    config.frozen_dtype = "bfloat16"
    # jax.checkpoint policy around the loss ('none', 'full' or a jax.checkpoint_policies name).
    config.remat_policy = "none"
    # How the teacher's UNet computes attention (dpiqa_jax.sd.attention.AttentionKernel): 'xla'
    # with the queries in rematerialised chunks of `query_chunk` tokens (0: unchunked), which keeps
    # the SD 1.5 teacher step at batch 16 within 16 GB per device on an 8-device mesh; or 'cudnn'
    # (NVIDIA GPUs, bf16) fused flash attention, with query_chunk=0.
    config.attention = ml_collections.ConfigDict({"implementation": "xla", "query_chunk": 1024})

    config.batch_size = 16  # global
    config.num_epochs = 30
    config.total_steps = -1  # > 0: train this many steps instead of num_epochs

    config.optimizer = ml_collections.ConfigDict({
        "name": "adam", "learning_rate": 1e-5, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
        "weight_decay": 0.0, "clip_norm": 0.0})
    # LR x factor at each milestone (torch MultiStepLR); epochs, or steps when given.
    config.schedule = ml_collections.ConfigDict({
        "milestone_epochs": (5,), "milestone_steps": (), "factor": 0.2})

    # 'ours': select on a validation part carved from training, score the test part once at the
    # end. 'authors': their protocol (the validation part joins training, the test part is
    # evaluated every epoch and selects; outputs say `selected_on_test`). See dpiqa_jax.train.run.
    config.protocol = "ours"

    config.log_every_steps = 50
    # Evaluate once per epoch, as the authors do; eval_every_steps > 0 evaluates every that many
    # steps instead.
    config.eval_every_epochs = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 2  # the latest; the best by validation SRCC is kept besides
    config.skip_nonfinite = False  # False: stop at the first non-finite loss or gradient
    config.progress_bar = True
    config.tensorboard = True

    # A bundle directory (dpiqa_jax.bundle) to start from when the workdir has no checkpoint.
    config.init_checkpoint = ""
    return config


def tiny_overrides(config: ml_collections.ConfigDict) -> None:
    """Seconds on one CPU: tiny random-init modules, 64x64 images of the in-memory demo set."""
    config.data.image_size = 64
    config.data.eval_batch_size = 8
    config.data.num_threads = 2
    config.data.prefetch_images = 8
    config.mesh = "data=-1,fsdp=1"
    config.dtype = "float32"
    config.frozen_dtype = "float32"
    config.batch_size = 8
    config.total_steps = 6
    config.schedule.milestone_epochs = ()
    config.schedule.milestone_steps = (4,)
    config.optimizer.learning_rate = 1e-3
    config.log_every_steps = 2
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.progress_bar = False
