"""Flags shared by the evaluation launchers (evaluate.py, run_splits.py): where the data is and
how images become model inputs. Importing this module defines them; the launchers adopt them
as their own (their --help lists them)."""

from absl import flags

from dpiqa_jax.data import images

from . import cli

DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
CONFIG_NAME = flags.DEFINE_string("variant", None,
                                  "Builder config the dataset was built with (default: first).")
cli.rename("config_name", "variant")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Images per predict_fn call.", lower_bound=1)
cli.rename("eval_batch_size", "batch_size")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Model input height and width.")
RESIZE_MODE = flags.DEFINE_enum("resize_mode", "squash", ["squash", "keep_aspect_crop"],
                                "How images are fitted to the input size.")
VALUE_RANGE = flags.DEFINE_list("value_range", ["0", "1"], "Pixel value range low,high.")


def image_config() -> images.ImageConfig:
    """The ImageConfig the flags describe; must match how the model was trained."""
    low, high = (float(v) for v in VALUE_RANGE.value)
    return images.ImageConfig(height=IMAGE_SIZE.value, width=IMAGE_SIZE.value,
                              resize_mode=RESIZE_MODE.value, value_range=(low, high))
