r"""DP-IQA teacher (SD 1.5 UNet + adapters + QFD), trained on MSE(score, MOS / 100).

  python -m launch.train --config=configs/teacher.py:koniq10k --workdir=runs/teacher_koniq \
      --config.sd_dir=/models/stable-diffusion-v1-5 --config.prompt_embeddings=prompts.npy \
      --config.data.data_dir=~/tensorflow_datasets

Variants: koniq10k, clive, spaq, flive, kadid10k, agiqa3k, iqa_folder (the authors' recipe: Adam
1e-5, batch 16, 30 epochs, LR x0.2 at one milestone epoch: KonIQ 5, CLIVE 10, LIVE-FB 2, SPAQ 5,
KADID-10k 5 with batch 14; ours for AGIQA-3K 10 (CLIVE's scale)), and `tiny`, a random-init
miniature on the generated in-memory demo set that runs on one CPU in seconds:

  python -m launch.train --config=configs/teacher.py:tiny --workdir=/tmp/teacher_tiny
  dpiqa train --config teacher:tiny --workdir /tmp/teacher_tiny     # installed, from any folder

KADID-10k differs from the authors' in its transforms only: their "synthetic" transforms resize
to 1024x768, flip, crop 512x512 at random (at test too) and ImageNet-normalise (defined in their
datasets_in_the_wild.py, which has no KADID loader), while every variant here feeds the whole
image resized to 512x512 in [0, 1] (what the VAE, the image adapter and the released checkpoints
expect, what their scripts feed for every other dataset, and a deterministic test score);
`--config.data.hflip=True` adds the flip. Batch
14 needs a data axis that divides 14 (1, 2, 7 or 14 devices); elsewhere set --config.batch_size.

The authors' protocol (80 / 20 split, selection on the test part, best test PLCC and SRCC):
`--config.protocol=authors`; the run's model is then WORKDIR/best_test_plcc_model.

`sd_dir` is a diffusers Stable Diffusion 1.5 directory (model_index.json, unet/, vae/);
`prompt_embeddings` the .npy written by `python -m launch.embed_prompts`. Memory of the full-size
train step on a mesh: `python -m launch.inspect --config=configs/teacher.py:koniq10k
--mesh=data=2,fsdp=4`.
"""

import ml_collections

try:  # imported as a package module: configs.teacher, or dpiqa_jax.configs.teacher installed
    from . import common
except ImportError:  # loaded from its path by ml_collections (a copy of this file elsewhere)
    from configs import common

# Milestone epoch of the LR decay per variant.
MILESTONE_EPOCH = {"koniq10k": 5, "clive": 10, "spaq": 5, "flive": 2, "kadid10k": 5,
                   "agiqa3k": 10, "iqa_folder": 5}
# The authors' teacher batch where it is not 16 (their build.py).
BATCH_SIZE = {"kadid10k": 14}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = common.check_variant(arg)
    config = common.base_config("teacher", variant)
    config.batch_size = BATCH_SIZE.get(variant, 16)
    config.optimizer.learning_rate = 1e-5
    config.model = ml_collections.ConfigDict({
        "architecture": "sd15",  # or 'tiny'
        "init": "sd",  # 'sd': UNet and VAE from sd_dir, the rest random; 'scratch': all random
        "latent": "mean",  # or 'sample' (the authors' posterior sample)
        "timestep": 1,
        "input_range": "0_1",  # what the VAE sees: [0, 1] (authors) or '-1_1'
    })
    config.freeze_unet = False  # the authors train the UNet
    config.sd_dir = "models/stable-diffusion-v1-5"
    config.prompt_embeddings = "prompts.npy"
    if variant == common.TINY:
        common.tiny_overrides(config)
        config.model.architecture = "tiny"
        config.model.init = "scratch"
        config.sd_dir = ""
        config.prompt_embeddings = ""  # random tiny prompt vectors
    else:
        config.schedule.milestone_epochs = (MILESTONE_EPOCH[variant],)
    return config
