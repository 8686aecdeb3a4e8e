r"""Scores a split of a built dataset with a checkpoint; writes metrics.json, predictions.csv (the
columns of `launch.score` plus `mos`: path,score,raw,status,error,map_path,mos) and scatter.png.

  # Test part of split seed3 of KonIQ-10k:
  python -m launch.evaluate --checkpoint=runs/koniq/seed3/best \
      --dataset=koniq10k --data_dir=~/tensorflow_datasets \
      --split_file=splits/koniq10k/random.json --split=seed3 --part=test --output=eval/koniq_s3

  # Cross-dataset: one checkpoint, every image of several other datasets, one table
  # (OUTPUT/<dataset>/... and OUTPUT/cross_dataset.md / .json):
  python -m launch.evaluate --checkpoint=runs/koniq/official/best \
      --data_dir=~/tensorflow_datasets --cross_datasets=live_challenge,spaq,kadid10k \
      --output=eval/koniq_cross

--checkpoint (alias --checkpoint_dir) and --output (alias --out_dir). The checkpoint is opened with
`dpiqa_jax.scorer.load_predict_fn(checkpoint)`, which returns predict_fn(images float32
[B, H, W, 3]) -> raw head outputs [B] and records the model's `input_size` and `mos_scale`; it is
imported when main runs, so this program's flags work without a model. Images are resized to the
input size stored in the model; --image_size, if given, must equal it. --resize_mode and
--value_range (defined in launch/eval_flags.py) must match how the model was trained (defaults:
DP-IQA's squash, [0, 1]).
"""

import dataclasses
import json
from pathlib import Path

from absl import app, flags, logging

from dpiqa_jax.data import builders, images, sources
from dpiqa_jax.eval import aggregate, protocol
from . import cli, eval_flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model to evaluate: bundle dir, training "
                                  "workdir or exported .safetensors.", required=True)
cli.rename("checkpoint_dir", "checkpoint")
_DATASET = flags.DEFINE_enum("dataset", None, builders.DATASET_NAMES, "Dataset to evaluate on.")
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "Split file (splits/<dataset>/*.json).")
_SPLIT = flags.DEFINE_string("split", None, "Split key: seed0..seed9 or official.")
_PART = flags.DEFINE_enum("part", "test", sources.PARTS, "Part of the split to score.")
_CROSS_DATASETS = flags.DEFINE_list("cross_datasets", [],
                                    "Score every image of each of these datasets instead.")
_ALLOW_MISSING = flags.DEFINE_bool("allow_missing", False,
                                   "Evaluate without split images absent from the build.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.", required=True)
cli.rename("out_dir", "output")
flags.adopt_module_key_flags(eval_flags)


def _model_image_config(predict_fn) -> images.ImageConfig:
    """The flags' image config at the model's stored input size; a different --image_size given
    on the command line is a usage error, not a silent resize to the wrong size."""
    size = predict_fn.input_size
    if flags.FLAGS["image_size"].present and eval_flags.IMAGE_SIZE.value != size:
        cli.exit_with_usage_error(f"--image_size={eval_flags.IMAGE_SIZE.value}, but the model "
                                  f"{_CHECKPOINT.value} takes {size}x{size} inputs; drop the flag")
    return dataclasses.replace(eval_flags.image_config(), height=size, width=size)


def _evaluate_split(predict_fn, out_dir: Path) -> None:
    if not _DATASET.value:
        raise app.UsageError("--dataset is required (or use --cross_datasets)")
    source = sources.open_source(_DATASET.value, eval_flags.DATA_DIR.value, _SPLIT_FILE.value,
                                 _SPLIT.value, _PART.value, eval_flags.CONFIG_NAME.value,
                                 _ALLOW_MISSING.value)
    result = protocol.evaluate(predict_fn, source, _model_image_config(predict_fn),
                               eval_flags.BATCH_SIZE.value)
    protocol.write_evaluation(
        result, out_dir, title=f"{_DATASET.value} {_SPLIT.value or ''} {_PART.value}",
        extra_info={"dataset": _DATASET.value, "split_file": _SPLIT_FILE.value,
                    "split": _SPLIT.value, "part": _PART.value,
                    "checkpoint_dir": _CHECKPOINT.value},
        mos_scale=predict_fn.mos_scale)
    logging.info("%s", json.dumps(result.metrics, indent=2))


def _evaluate_cross(predict_fn, out_dir: Path) -> None:
    test_sets = {name: sources.open_source(name, eval_flags.DATA_DIR.value, part=sources.ALL)
                 for name in _CROSS_DATASETS.value}
    results = protocol.evaluate_cross_dataset(predict_fn, test_sets,
                                              _model_image_config(predict_fn),
                                              eval_flags.BATCH_SIZE.value, out_dir=out_dir,
                                              mos_scale=predict_fn.mos_scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cross_dataset.json").write_text(json.dumps(results, indent=2) + "\n")
    table = aggregate.cross_dataset_markdown(results, title=f"checkpoint {_CHECKPOINT.value}")
    (out_dir / "cross_dataset.md").write_text(table)
    logging.info("\n%s", table)


def main(argv):
    del argv
    # Lazy: the model code is only needed once flags are parsed and a checkpoint is evaluated.
    from dpiqa_jax.scorer import load_predict_fn

    try:
        predict_fn = load_predict_fn(_CHECKPOINT.value)
    except (OSError, ValueError) as err:
        cli.exit_with_usage_error(f"cannot load --checkpoint: {err}")
    out_dir = Path(_OUTPUT.value)
    if _CROSS_DATASETS.value:
        _evaluate_cross(predict_fn, out_dir)
    else:
        _evaluate_split(predict_fn, out_dir)


if __name__ == "__main__":
    cli.run(main)
