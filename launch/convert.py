r"""Converts the authors' DP-IQA PyTorch checkpoints into our model bundles.

  python -m launch.convert official-teacher --checkpoint dpiqa_teacher.pth \
      --prompts prompts.npy --output models/teacher_koniq \
      [--sd_config_from SD_DIR] [--image_size 512]
  python -m launch.convert official-student --checkpoint dpiqa_student.pth \
      --output models/student_koniq [--backbone b7]

Checkpoints: torch pickles (.pth/.pt/.bin, read without torch) or .safetensors. Conversion is
strict: a missing, unexpected or mis-shaped tensor is an error naming it. Tensors the model does
not use (VAE decoder, QFD.bnc1, QFD.classifier_dist, BatchNorm counters) are kept in the bundle so
`launch.export --format official` reproduces the checkpoint bit for bit.
official-student also reads an ONNX student (the authors' student_model.onnx, recognised by its
content; needs the onnx package), checked node by node; folded BatchNorms become identity + bias.
--prompts: float32 [1485, 768] from `launch.embed_prompts` (its prompts.json sidecar, if present,
is recorded). --sd_config_from: a diffusers directory whose unet/config.json and vae/config.json
describe a teacher that is not SD 1.5-sized. --backbone: default inferred from the shapes.
Exit status: 0 converted, 1 the checkpoint does not convert, 2 usage error. A file that cannot be
read or converted (corrupt, crafted, truncated) gives one line naming it, never a traceback.
Flag names also accept dashes (--sd-config-from, --image-size).
"""

import os

from absl import flags

from dpiqa_jax import export
from dpiqa_jax.convert import onnx_student

from . import cli

COMMANDS = ("official-teacher", "official-student")
# What reading or converting a bad file raises: the readers' CheckpointError and the converters'
# StateDictMismatchError (both ValueErrors), I/O errors, and the arithmetic, indexing and type
# errors that shapes crafted to be inconsistent can cause in config inference.
_UNCONVERTIBLE = (OSError, ValueError, ImportError, TypeError, KeyError, IndexError,
                  ArithmeticError, MemoryError)

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The authors' state dict file.",
                                  required=True)
_OUT = flags.DEFINE_string("output", None, "Output bundle directory.", required=True)
cli.rename("out", "output")
_PROMPTS = flags.DEFINE_string("prompts", None, "official-teacher: prompt embeddings .npy.")
_SD_CONFIG_FROM = flags.DEFINE_string("sd_config_from", None, "official-teacher: diffusers "
                                      "directory with unet/ and vae/ config.json (default SD 1.5).")
_BACKBONE = flags.DEFINE_string("backbone", None, "official-student: EfficientNet variant "
                                "(b0..b7, lite0..lite2); default inferred.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Model input side recorded in the bundle.",
                                   lower_bound=8)


def _command(argv: list[str]) -> str:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        cli.exit_with_usage_error(f"expected one command, {' or '.join(COMMANDS)}; got "
                                  f"{argv[1:] or 'none'}")
    return argv[1]


def _check_usage(command: str) -> None:
    if not os.path.isfile(_CHECKPOINT.value):
        cli.exit_with_usage_error(f"--checkpoint {_CHECKPOINT.value}: no such file")
    if command == "official-teacher":
        if not _PROMPTS.value or not os.path.isfile(_PROMPTS.value):
            cli.exit_with_usage_error(f"official-teacher needs --prompts, an existing .npy file "
                                      f"(got {_PROMPTS.value!r})")
        if _BACKBONE.value:
            cli.exit_with_usage_error("--backbone applies to official-student only")
    elif _PROMPTS.value or _SD_CONFIG_FROM.value:
        cli.exit_with_usage_error("--prompts and --sd_config_from apply to official-teacher only")


def _naming_the_inputs(err: BaseException) -> str:
    """The error's message, prefixed with the checkpoint's path when it names no input file."""
    message = str(err) or type(err).__name__
    inputs = [p for p in (_CHECKPOINT.value, _PROMPTS.value) if p]
    return message if any(p in message for p in inputs) else f"{_CHECKPOINT.value}: {message}"


def _convert(command: str) -> str:
    if command == "official-teacher":
        return export.import_official_teacher(
            _CHECKPOINT.value, _PROMPTS.value, _OUT.value, sd_config_dir=_SD_CONFIG_FROM.value,
            image_size=_IMAGE_SIZE.value)
    if onnx_student.looks_like_onnx(_CHECKPOINT.value):
        return onnx_student.import_onnx_student(_CHECKPOINT.value, _OUT.value,
                                                backbone=_BACKBONE.value)
    return export.import_official_student(_CHECKPOINT.value, _OUT.value,
                                          backbone=_BACKBONE.value, image_size=_IMAGE_SIZE.value)


def main(argv):
    command = _command(argv)
    _check_usage(command)
    return cli.write_reported("conversion", lambda: _convert(command), _UNCONVERTIBLE,
                              _naming_the_inputs)


if __name__ == "__main__":
    cli.run(main)
