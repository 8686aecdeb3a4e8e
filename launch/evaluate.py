r"""Scores a split of a built dataset with a checkpoint; writes metrics.json, predictions.csv and
scatter.png.

  # Test part of split seed3 of KonIQ-10k:
  python -m launch.evaluate --checkpoint_dir=runs/koniq/seed3/best \
      --dataset=koniq10k --data_dir=~/tensorflow_datasets \
      --split_file=splits/koniq10k/random.json --split=seed3 --part=test --out_dir=eval/koniq_s3

  # Cross-dataset: one checkpoint, every image of several other datasets, one table
  # (out_dir/<dataset>/... and out_dir/cross_dataset.md / .json):
  python -m launch.evaluate --checkpoint_dir=runs/koniq/official/best \
      --data_dir=~/tensorflow_datasets --cross_datasets=live_challenge,spaq,kadid10k \
      --out_dir=eval/koniq_cross

The checkpoint is opened with `dpiqa_jax.scorer.load_predict_fn(checkpoint_dir)`, which must return
predict_fn(images float32 [B, H, W, 3]) -> scores [B]; it is imported when main runs, so this
program's flags work without a model. --image_size, --resize_mode and --value_range (defined in
launch/eval_flags.py) must match how the model was trained (defaults: DP-IQA's 512x512 squash,
[0, 1]).
"""

import json
from pathlib import Path

from absl import app, flags, logging

from dpiqa_jax.data import builders, sources
from dpiqa_jax.eval import aggregate, protocol
from . import cli, eval_flags

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint", None, "Model to evaluate: bundle dir or "
                                      "training workdir.", required=True)
cli.rename("checkpoint_dir", "checkpoint")
_DATASET = flags.DEFINE_enum("dataset", None, builders.DATASET_NAMES, "Dataset to evaluate on.")
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "Split file (splits/<dataset>/*.json).")
_SPLIT = flags.DEFINE_string("split", None, "Split key: seed0..seed9 or official.")
_PART = flags.DEFINE_enum("part", "test", sources.PARTS, "Part of the split to score.")
_CROSS_DATASETS = flags.DEFINE_list("cross_datasets", [],
                                    "Score every image of each of these datasets instead.")
_ALLOW_MISSING = flags.DEFINE_bool("allow_missing", False,
                                   "Evaluate without split images absent from the build.")
_OUT_DIR = flags.DEFINE_string("output", None, "Output directory.", required=True)
cli.rename("out_dir", "output")
flags.adopt_module_key_flags(eval_flags)


def _evaluate_split(predict_fn, out_dir: Path) -> None:
    if not _DATASET.value:
        raise app.UsageError("--dataset is required (or use --cross_datasets)")
    source = sources.open_source(_DATASET.value, eval_flags.DATA_DIR.value, _SPLIT_FILE.value,
                                 _SPLIT.value, _PART.value, eval_flags.CONFIG_NAME.value,
                                 _ALLOW_MISSING.value)
    result = protocol.evaluate(predict_fn, source, eval_flags.image_config(),
                               eval_flags.BATCH_SIZE.value)
    protocol.write_evaluation(
        result, out_dir, title=f"{_DATASET.value} {_SPLIT.value or ''} {_PART.value}",
        extra_info={"dataset": _DATASET.value, "split_file": _SPLIT_FILE.value,
                    "split": _SPLIT.value, "part": _PART.value,
                    "checkpoint_dir": _CHECKPOINT_DIR.value})
    logging.info("%s", json.dumps(result.metrics, indent=2))


def _evaluate_cross(predict_fn, out_dir: Path) -> None:
    test_sets = {name: sources.open_source(name, eval_flags.DATA_DIR.value, part=sources.ALL)
                 for name in _CROSS_DATASETS.value}
    results = protocol.evaluate_cross_dataset(predict_fn, test_sets, eval_flags.image_config(),
                                              eval_flags.BATCH_SIZE.value, out_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cross_dataset.json").write_text(json.dumps(results, indent=2) + "\n")
    table = aggregate.cross_dataset_markdown(results, title=f"checkpoint {_CHECKPOINT_DIR.value}")
    (out_dir / "cross_dataset.md").write_text(table)
    logging.info("\n%s", table)


def main(argv):
    del argv
    # Lazy: the model code is only needed once flags are parsed and a checkpoint is evaluated.
    from dpiqa_jax.scorer import load_predict_fn

    predict_fn = load_predict_fn(_CHECKPOINT_DIR.value)
    out_dir = Path(_OUT_DIR.value)
    if _CROSS_DATASETS.value:
        _evaluate_cross(predict_fn, out_dir)
    else:
        _evaluate_split(predict_fn, out_dir)


if __name__ == "__main__":
    cli.run(main)
