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

from dpiqa_jax.train import run

from . import cli, distributed_flags

_CONFIG = cli.define_config_flag("Training config: teacher:VARIANT, student:VARIANT or a "
                                 "config file, configs/teacher.py:VARIANT.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, best_model).",
                               required=True)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose saved config differs from this one in "
    "fields that change the run (the differing keys are logged).")
flags.mark_flag_as_required("config")
flags.adopt_module_key_flags(distributed_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed_flags.initialize()
    run.train(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
    cli.run(main)
