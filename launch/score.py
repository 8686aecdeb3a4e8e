r"""Scores images with a DP-IQA model and writes one row per input: path,score,raw,status,error.

  python -m launch.score --checkpoint runs/koniq/best_model --output scores.csv photos/ '*.png' \
      @more.txt [--format csv|json] [--batch_size 8] [--save_maps maps/] [--latent mean|sample]

--checkpoint: a bundle directory (ours or a converted authors' checkpoint), a training workdir
(its best_model/), or a .safetensors file from `launch.export --format safetensors`.
INPUT: image files; folders (searched recursively for image extensions); globs (quote them; `**`
recurses); @list.txt (one path per line, relative to the list file). Without --output the rows go
to stdout. `score` is on the model's MOS scale (printed to stderr), higher is better; `raw` is the
head output. An input that cannot be scored (missing, unreadable, not an image, truncated, a
decompression bomb, smaller than --min_side) gets status=error with the reason; the others are
still scored.

--save_maps DIR writes DIR/<stem>.npy (the quality map, float32 [8, 64, 64], channel-first as the
authors' code returns it) and DIR/<stem>.png (its channel mean as a heatmap over the 512x512 model
input). When several inputs share a stem, each of them gets <stem>-<8 hex digits of the sha1 of
its absolute path> instead, so no map overwrites another.

Exit status: 0 all inputs scored, 1 some failed (summary on stderr), 2 usage error (bad flag, no
inputs, checkpoint not found or not loadable).
Flag names also accept dashes (--batch-size, --save-maps, ...).
"""

import contextlib
import os
import sys

from absl import app, flags
import jax.numpy as jnp

from dpiqa_jax import scorer
from dpiqa_jax.data import images
from . import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model: bundle dir, training workdir or "
                                  "exported .safetensors.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output file (.csv or .json); default stdout.")
_FORMAT = flags.DEFINE_enum("format", None, list(scorer.OUTPUT_FORMATS),
                            "Output format; default from --output's extension, else csv.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", scorer.DEFAULT_BATCH_SIZE,
                                   "Images per device call (the last batch is padded).",
                                   lower_bound=1)
_SAVE_MAPS = flags.DEFINE_string("save_maps", None, "Directory for quality maps (.npy + .png).")
_LATENT = flags.DEFINE_enum("latent", "mean", list(scorer.LATENT_MODES),
                            "Teacher: posterior mean (default) or a per-image seeded sample.")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed of --latent=sample.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS,
                                   "Refuse decoded images with more pixels.", lower_bound=1)
_MIN_SIDE = flags.DEFINE_integer("min_side", scorer.MIN_IMAGE_SIDE,
                                 "Refuse images narrower or lower than this.", lower_bound=1)
_MOS_SCALE = flags.DEFINE_float("mos_scale", None, "Head output -> MOS factor, for models that "
                                "do not record it.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bar on stderr.")
_FAILURES_SHOWN = 10


def _load_scorer() -> scorer.Scorer:
    try:
        return scorer.Scorer.load(
            _CHECKPOINT.value, batch_size=_BATCH_SIZE.value, latent=_LATENT.value,
            seed=_SEED.value, dtype=jnp.dtype(_DTYPE.value), max_pixels=_MAX_PIXELS.value,
            min_side=_MIN_SIDE.value, mos_scale=_MOS_SCALE.value)
    except (OSError, ValueError) as err:
        cli.exit_with_usage_error(f"cannot load --checkpoint: {err}")


def main(argv):
    arguments = argv[1:]
    if not arguments:
        cli.exit_with_usage_error("no inputs: pass image files, folders, globs or @list.txt")
    if _OUTPUT.value and not os.path.isdir(os.path.dirname(os.path.abspath(_OUTPUT.value))):
        cli.exit_with_usage_error(f"--output {_OUTPUT.value}: its directory does not exist")
    model = _load_scorer()
    paths, failed_inputs = scorer.expand_inputs(arguments)
    fmt = scorer.output_format(_OUTPUT.value, _FORMAT.value)
    low, high = model.score_range
    print(f"{model.kind} model {model.source}: scores on [{low:g}, {high:g}], higher is better; "
          f"{len(paths)} images", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        stream = (stack.enter_context(open(_OUTPUT.value, "w", encoding="utf-8", newline=""))
                  if _OUTPUT.value else sys.stdout)
        summary = scorer.score_to_output(model, paths, stream, fmt, failed_inputs=failed_inputs,
                                         maps_dir=_SAVE_MAPS.value, progress=_PROGRESS.value)
    print(f"scored {summary.scored} of {summary.total} inputs; {summary.failed} failed",
          file=sys.stderr)
    for _, reason in summary.failures[:_FAILURES_SHOWN]:
        print(f"  failed: {reason}", file=sys.stderr)
    if summary.failed > _FAILURES_SHOWN:
        print(f"  ... and {summary.failed - _FAILURES_SHOWN} more (see the output's error column)",
              file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    cli.run(main)
