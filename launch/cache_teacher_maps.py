r"""Computes the frozen teacher's quality maps of a split's training images once, for distillation.

  python -m launch.cache_teacher_maps --config=configs/student.py:koniq10k \
      --config.teacher_checkpoint=runs/teacher_koniq/best_model --output=koniq_seed0_maps.safetensors

then train the student with `--config.teacher_maps_cache=koniq_seed0_maps.safetensors`. The
cache is keyed by image content (dpiqa_jax.train.teacher_maps): it serves the same split, image
size and resize mode it was made with, without augmentation. Multi-host flags as launch/train.py.
"""

from absl import app, flags, logging

from dpiqa_jax.train import console, teacher_maps

from . import cli, distributed_flags

_CONFIG = cli.define_config_flag("Student training config: student:VARIANT or a config file, "
                                 "configs/student.py:VARIANT.")
_OUT = flags.DEFINE_string("output", None, "Output .safetensors file.", required=True)
cli.rename("out", "output")
flags.mark_flag_as_required("config")
flags.adopt_module_key_flags(distributed_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.quiet_library_logs()  # before JAX probes its backends
    distributed_flags.initialize()
    count = teacher_maps.build_cache(_CONFIG.value, _OUT.value)
    logging.info("wrote the teacher maps of %d images to %s", count, _OUT.value)


if __name__ == "__main__":
    cli.run(main)
