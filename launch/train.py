r"""Trains the DP-IQA teacher or student; the config file's docstring gives each command.

  python -m launch.train --config=configs/teacher.py:tiny --workdir=/tmp/teacher_tiny
  python -m launch.train --config=configs/teacher.py:koniq10k --workdir=runs/teacher_koniq \
      --config.sd_dir=/models/stable-diffusion-v1-5 --config.prompt_embeddings=prompts.npy

`--config`: `teacher:VARIANT` / `student:VARIANT` (the shipped configs, from any folder) or a
config file path. Overrides: `--config.key=value` (unknown keys are rejected). A workdir that
holds checkpoints is resumed, with the config it was saved with: a difference in a field that
changes the run (anything but logging, evaluation and checkpoint intervals, run length and data
reading settings) is refused with the list of fields, unless --allow_config_change. A workdir
that cannot be written, or keep_checkpoints < 1, is refused before any model is built (exit 2).

Multi-host: on a TPU VM or in a SLURM job with several tasks `jax.distributed` starts by itself
(--multihost=auto); elsewhere pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on every process (launch/tpu_pod.sh runs one process per TPU host).
"""

from absl import app, flags

from dpiqa_jax.train import console, workdir

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
    try:
        workdir.check_run_settings(_WORKDIR.value, _CONFIG.value.keep_checkpoints)
        console.quiet_library_logs()  # before JAX probes its backends
        distributed_flags.initialize()
        # Imported only now: the model, data and checkpoint libraries take many seconds to load,
        # and a bad workdir is reported before that.
        from dpiqa_jax.train import run  # pylint: disable=import-outside-toplevel
        run.train(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except workdir.RunSettingsError as error:
        cli.exit_with_usage_error(str(error))


if __name__ == "__main__":
    cli.run(main)
