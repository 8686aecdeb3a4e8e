r"""Scores images with a DP-IQA model and writes one row per input:
path,score,raw,status,error,map_path.

  python -m launch.score --checkpoint runs/koniq/best_model --output scores.csv photos/ '*.png' \
      @more.txt [--format csv|json] [--batch_size 8] [--save_maps maps/] [--latent mean|sample]
      [--cpu_devices 2]

--checkpoint: a bundle directory (ours or a converted authors' checkpoint), a training workdir
(its best_model/), or a .safetensors file from `launch.export --format safetensors`.
INPUT: image files; folders (searched recursively for image extensions); globs (quote them; `**`
recurses; neither enters links to directories); @list.txt (one path per line, relative to the list
file). Without --output the rows go to stdout. `score` is on the model's MOS scale (printed to
stderr), higher is better, 6 significant digits; `raw` is the head output. A score outside the
model's score range is kept, and counted in one warning at the end. An input that cannot be scored
(missing, unreadable, not a regular file (FIFO, device, socket), larger than --max_file_bytes, a
symlink loop, not an image, truncated, a decompression bomb, smaller than --min_side, or a
non-finite model output) gets status=error with the reason; the others are still scored. Rows are
written and flushed one by one: after Ctrl-C the rows so far are in the output (exit 130). File
names that are not UTF-8 are written back byte for byte (CSV; JSON escapes them as \udcXX).

--save_maps DIR writes DIR/<stem>.npy (the quality map, float32 [64, 64, 8], channel-last as the
Python API and jax-export return it) and DIR/<stem>.png (its channel mean as a heatmap over the
512x512 model input); the row's map_path names the .npy. When several inputs share a stem, each of
them gets <stem>-<8 hex digits of the sha1 of its absolute path> instead, so no map overwrites
another.

Exit status: 0 all inputs scored, 1 some failed (summary on stderr), 2 usage error (bad flag, no
inputs, checkpoint not found or not loadable), 130 interrupted.
Flag names also accept dashes (--batch-size, --save-maps, ...).
"""

import contextlib
import os
import sys

import jax
import jax.numpy as jnp
from absl import flags

from dpiqa_jax import score_files, scorer
from dpiqa_jax.data import images
from dpiqa_jax.eval import rows

from . import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model: bundle dir, training workdir or "
                                  "exported .safetensors.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output file (.csv or .json); default stdout.")
_FORMAT = flags.DEFINE_enum("format", None, list(rows.OUTPUT_FORMATS),
                            "Output format; default from --output's extension, else csv.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", scorer.DEFAULT_BATCH_SIZE,
                                   "Most images per device call (a shorter batch is padded to "
                                   "the next of 1, 2, 4, ...).",
                                   lower_bound=1)
_SAVE_MAPS = flags.DEFINE_string("save_maps", None, "Directory for quality maps (.npy + .png).")
_LATENT = flags.DEFINE_enum("latent", "mean", list(scorer.LATENT_MODES),
                            "Teacher: posterior mean (default) or a per-image seeded sample.")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed of --latent=sample.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS,
                                   "Refuse decoded images with more pixels.", lower_bound=1)
_MAX_FILE_BYTES = flags.DEFINE_integer("max_file_bytes", scorer.DEFAULT_MAX_FILE_BYTES,
                                       "Refuse image files larger than this, unread.",
                                       lower_bound=1)
_MIN_SIDE = flags.DEFINE_integer("min_side", scorer.MIN_IMAGE_SIDE,
                                 "Refuse images narrower or lower than this.", lower_bound=1)
_MOS_SCALE = flags.DEFINE_float("mos_scale", None, "Head output -> MOS factor, for models that "
                                "do not record it.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bar on stderr.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 1, "Student on a CPU: split JAX's CPU into this many devices and each batch "
    "over them (the README's CPU table: 2 on a 2-core machine scores ~40% more images/s). "
    "Use a --batch_size that is a multiple of it.", lower_bound=1)
_FAILURES_SHOWN = 10
_INTERRUPTED = 130


def _load_scorer() -> scorer.Scorer:
    try:
        return scorer.Scorer.load(
            _CHECKPOINT.value, batch_size=_BATCH_SIZE.value, latent=_LATENT.value,
            seed=_SEED.value, dtype=jnp.dtype(_DTYPE.value), max_pixels=_MAX_PIXELS.value,
            min_side=_MIN_SIDE.value, mos_scale=_MOS_SCALE.value,
            max_file_bytes=_MAX_FILE_BYTES.value, devices=_CPU_DEVICES.value)
    except (OSError, ValueError) as err:
        cli.exit_with_usage_error(f"cannot load --checkpoint: {err}")


def _print_summary(summary: score_files.RunSummary, score_range: tuple[float, float]) -> None:
    print(f"scored {summary.scored} of {summary.total} inputs; {summary.failed} failed",
          file=sys.stderr)
    for _, reason in summary.failures[:_FAILURES_SHOWN]:
        print(f"  failed: {reason}", file=sys.stderr)
    if summary.failed > _FAILURES_SHOWN:
        print(f"  ... and {summary.failed - _FAILURES_SHOWN} more (see the output's error column)",
              file=sys.stderr)
    if summary.out_of_range:
        low, high = score_range
        print(f"warning: {summary.out_of_range} of {summary.scored} scores fall outside the "
              f"model's score range [{low:g}, {high:g}] (kept as computed)", file=sys.stderr)


def main(argv):
    arguments = argv[1:]
    if not arguments:
        cli.exit_with_usage_error("no inputs: pass image files, folders, globs or @list.txt")
    if _OUTPUT.value and not os.path.isdir(os.path.dirname(os.path.abspath(_OUTPUT.value))):
        cli.exit_with_usage_error(f"--output {_OUTPUT.value}: its directory does not exist")
    if _CPU_DEVICES.value > 1:
        # Takes effect only before JAX's CPU backend starts, which nothing here has done yet.
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    model = _load_scorer()
    paths, failed_inputs = score_files.expand_inputs(arguments)
    fmt = rows.output_format(_OUTPUT.value, _FORMAT.value)
    low, high = model.score_range
    print(f"{model.kind} model {model.source}: scores on [{low:g}, {high:g}], higher is better; "
          f"{len(paths)} images", file=sys.stderr)
    # Undecodable file-name bytes go out as they came in, on stdout as in a file.
    sys.stdout.reconfigure(errors="surrogateescape")
    with contextlib.ExitStack() as stack:
        stream = (stack.enter_context(rows.open_output(_OUTPUT.value)) if _OUTPUT.value
                  else sys.stdout)
        try:
            summary = score_files.score_to_output(model, paths, stream, fmt,
                                             failed_inputs=failed_inputs,
                                             maps_dir=_SAVE_MAPS.value, progress=_PROGRESS.value)
        except KeyboardInterrupt:
            print(f"interrupted; the rows scored so far are in {_OUTPUT.value or 'stdout'}",
                  file=sys.stderr)
            return _INTERRUPTED
    _print_summary(summary, model.score_range)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    cli.run(main)
