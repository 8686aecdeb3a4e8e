r"""Trains the DP-IQA teacher or student; the config file's docstring gives each command.

  python -m launch.train --config=configs/teacher.py:tiny --workdir=/tmp/teacher_tiny
  python -m launch.train --config=configs/teacher.py:koniq10k --workdir=runs/teacher_koniq \
      --config.sd_dir=/models/stable-diffusion-v1-5 --config.prompt_embeddings=prompts.npy

Overrides: `--config.key=value` (unknown keys are rejected). A workdir that holds checkpoints is
resumed. Multi-host: on a TPU VM or in a SLURM job with several tasks `jax.distributed` starts
by itself (--multihost=auto); elsewhere pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every process (launch/tpu_pod.sh runs one process per TPU host).
"""

from absl import app, flags
from ml_collections import config_flags

from dpiqa_jax.train import run
from launch import distributed_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, best_model).",
                               required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed_flags.initialize()
    run.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
