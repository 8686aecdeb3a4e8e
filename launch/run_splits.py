r"""Trains and tests over repeated splits; writes summary.json and summary.md (median, mean ± std
per metric, and a per-split table).

Each split is trained by dpiqa_jax.train.run.train_and_evaluate(config, split, workdir) (its
best_model/ bundle) and that bundle is tested with dpiqa_jax.scorer.load_predict_fn. Both are
imported when main runs, so --help works without loading the training or model code.

  # Ten seeded splits of KonIQ-10k (seed0..seed9):
  python -m launch.run_splits --config=configs/teacher.py:koniq10k \
      --dataset=koniq10k --split_file=splits/koniq10k/random.json \
      --data_dir=~/tensorflow_datasets --workdir=runs/koniq_random

  # KonIQ-10k's official split (after `python -m launch.make_splits --koniq_sets_csv=...`):
  python -m launch.run_splits --config=configs/teacher.py:koniq10k --dataset=koniq10k \
      --split_file=splits/koniq10k/official.json --splits=official --workdir=runs/koniq_official

  # The authors' protocol on the same splits (validation joins training; best test PLCC and
  # SRCC over the epochs, selected on the test part: summary_selected_on_test.md):
  python -m launch.run_splits --config=configs/teacher.py:koniq10k --config.protocol=authors \
      --dataset=koniq10k --split_file=splits/koniq10k/random.json --workdir=runs/koniq_authors

Splits already finished (workdir/<split>/test/metrics.json, or selected_on_test.json under the
authors' protocol) are reused, so an interrupted sweep resumes. Layout:
dpiqa_jax/eval/multi_split.py.
"""

from absl import flags

from dpiqa_jax.data import builders, splits
from dpiqa_jax.eval import multi_split

from . import cli, eval_flags

_CONFIG = cli.define_config_flag("Training config: teacher:VARIANT, student:VARIANT or a "
                                 "config file, configs/teacher.py:VARIANT.")
_DATASET = flags.DEFINE_enum("dataset", None, builders.DATASET_NAMES, "Dataset.", required=True)
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "Split file (splits/<dataset>/*.json).",
                                  required=True)
_SPLITS = flags.DEFINE_list(
    "splits", [splits.seed_key(seed) for seed in range(splits.DEFAULT_NUM_SPLITS)],
    "Split keys to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root of the runs and the summary.",
                               required=True)
_RERUN = flags.DEFINE_bool("rerun_finished", False, "Retrain splits that already have results.")
flags.mark_flag_as_required("config")
flags.adopt_module_key_flags(eval_flags)


def main(argv):
    del argv
    # Lazy: the flags (and --help) work before the training and model code exist.
    from dpiqa_jax.scorer import load_predict_fn

    evaluate_fn = multi_split.make_test_evaluator(
        eval_flags.DATA_DIR.value, load_predict_fn, eval_flags.image_config(),
        eval_flags.BATCH_SIZE.value, eval_flags.CONFIG_NAME.value)
    multi_split.run_over_splits(
        multi_split.default_train_fn(), evaluate_fn, _CONFIG.value, _DATASET.value,
        _SPLIT_FILE.value, _SPLITS.value, _WORKDIR.value, skip_finished=not _RERUN.value,
        protocol_name=_CONFIG.value.protocol)


if __name__ == "__main__":
    cli.run(main)
