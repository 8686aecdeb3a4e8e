r"""Builds an IQA dataset (TFDS, array_record, no TensorFlow) from your downloaded copy.

  python -m launch.build_dataset --dataset=koniq10k --manual_dir=/data/koniq10k \
      --data_dir=~/tensorflow_datasets [--variant=512x384] [--skip_bad_images]

  # Your own images: a CSV (filename,mos) + a folder; the MOS range is required.
  python -m launch.build_dataset --dataset=iqa_folder --folder_name=my_photos \
      --folder_mos_range=1,5 --manual_dir=/data/my_photos --data_dir=~/tensorflow_datasets

Datasets: koniq10k, live_challenge, spaq, flive, kadid10k, agiqa3k, iqa_folder. Each dataset's
expected manual-directory layout is printed by --describe_layout. --skip_bad_images builds the
variant "<variant>_skip_bad", leaving out (and reporting) missing or undecodable images.
"""

from absl import app, flags, logging

from dpiqa_jax.data import builders

from . import cli

_DATASET = flags.DEFINE_enum("dataset", None, builders.DATASET_NAMES, "Dataset to build.",
                             required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Your downloaded copy (official layout).")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
_CONFIG = flags.DEFINE_string("variant", None, "Builder config of the dataset (default: its "
                              "first).")
cli.rename("config", "variant")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_images", False,
                              "Leave out missing / undecodable images instead of failing.")
_DESCRIBE = flags.DEFINE_bool("describe_layout", False,
                              "Print the expected manual-directory layout and exit.")
_FOLDER_NAME = flags.DEFINE_string("folder_name", None, "iqa_folder: name of your dataset.")
_FOLDER_MOS_RANGE = flags.DEFINE_list("folder_mos_range", None, "iqa_folder: low,high of the MOS.")
_FOLDER_LOWER_BETTER = flags.DEFINE_bool("folder_lower_is_better", False,
                                         "iqa_folder: a higher score means worse quality.")
_FOLDER_CSV = flags.DEFINE_string("folder_csv", "labels.csv", "iqa_folder: label CSV.")
_FOLDER_IMAGES = flags.DEFINE_string("folder_images", "images", "iqa_folder: image folder.")


def _config():
    if _DATASET.value != "iqa_folder":
        return _CONFIG.value
    if not (_FOLDER_NAME.value and _FOLDER_MOS_RANGE.value):
        raise app.UsageError("iqa_folder needs --folder_name and --folder_mos_range=low,high")
    low, high = (float(v) for v in _FOLDER_MOS_RANGE.value)
    return builders.IqaFolderConfig(name=_FOLDER_NAME.value, mos_range=(low, high),
                                    higher_is_better=not _FOLDER_LOWER_BETTER.value,
                                    csv_file=_FOLDER_CSV.value, image_dir=_FOLDER_IMAGES.value)


def main(argv):
    del argv
    if _DESCRIBE.value:
        print(builders.builder_class(_DATASET.value).MANUAL_DOWNLOAD_INSTRUCTIONS)
        return
    if not _MANUAL_DIR.value:
        raise app.UsageError("--manual_dir is required to build")
    builder = builders.build(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value, _config(),
                             _SKIP_BAD.value)
    metadata = builder.info.metadata
    logging.info("%s/%s: %d images in %s; %d skipped", _DATASET.value, builder.builder_config.name,
                 len(metadata["names"]), builder.data_dir, len(metadata["skipped"]))


if __name__ == "__main__":
    cli.run(main)
