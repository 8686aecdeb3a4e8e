"""Parity with PyTorch, one JSON line per comparison.

Forward parity of our Flax SD 1.5 modules with diffusers/transformers:

  python -m launch.parity --size tiny
  python -m launch.parity --size sd15 --res 128          # full size, random weights, ~10 GiB RAM
  python -m launch.parity --size sd15 --res 512 --sd /path/to/stable-diffusion-v1-5

Prints {"module", "params", "params_torch", "max_abs_err", "max_rel_err", "dtype"} per module and
dtype (fp32 and bf16; bf16 computes in bf16 against the fp32 reference). Exits 1 when an fp32
module's max_rel_err (relative to the reference's max magnitude) exceeds 1e-3 or when parameter
counts differ.

Train-step parity of our teacher or student training with the authors' PyTorch loop:

  python -m launch.parity --train teacher --size tiny [--steps 5] [--res 64]
  python -m launch.parity --train student --size sd15     # the full-size B7 student

Prints first one JSON line with the conditions (torch layout and threads, what randomness is
switched off), then {"model", "step", "quantity", "max_abs_err", "max_rel_err", "tolerance",
"worst"} per compared quantity (losses, step-1 gradients, the parameters and Adam moments after
the last step, BatchNorm statistics); exits 1 when any max_rel_err exceeds its tolerance.
`--size sd15` means full size: the SD 1.5 teacher or the B7 student, random weights.

Needs the dev requirements (torch, diffusers, transformers).
"""

import json
import sys

import jax
from absl import app, flags

from dpiqa_jax.sd import parity

from . import cli

_SIZE = flags.DEFINE_enum("size", "tiny", ["tiny", "sd15"], "Reference model size.")
_RES = flags.DEFINE_integer("res", None, "Image side in pixels (latent side is res/8); default 64 "
                            "(512 for the full-size student).")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Images per batch (the context is broadcast).",
                              lower_bound=1)
cli.rename("batch", "batch_size")
_SD = flags.DEFINE_string("sd", None, "A real SD 1.5 diffusers directory instead of random weights.")
_TRAIN = flags.DEFINE_enum("train", None, ["teacher", "student"],
                           "Compare training steps of this model instead of forward passes.")
_STEPS = flags.DEFINE_integer("steps", 5, "Optimizer steps of a --train comparison (more than "
                              "the first milestone, step 2).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and batches of a --train comparison.")


def _forward_parity() -> bool:
    failed = False
    for result in parity.run_parity(_SIZE.value, _RES.value or 64, _SD.value, _BATCH.value):
        print(result.to_json(), flush=True)
        failed |= result.failed()
    return failed


def _train_parity() -> bool:
    # Imported here: torch and the reference models only for this mode.
    from dpiqa_jax.reference import train_parity  # pylint: disable=import-outside-toplevel
    if _SD.value:
        raise app.UsageError("--sd is for the forward comparison; --train uses random weights")
    # fp32 matmuls everywhere (an accelerator would otherwise use TF32/bf16 passes).
    jax.config.update("jax_default_matmul_precision", "highest")
    setup = train_parity.TrainParitySetup(_TRAIN.value, _SIZE.value, steps=_STEPS.value,
                                          res=_RES.value, batch=_BATCH.value, seed=_SEED.value)
    print(json.dumps({"setup": train_parity.describe(setup)}), flush=True)
    failed = False
    for result in train_parity.train_parity(setup):
        print(result.to_json(), flush=True)
        failed |= result.failed()
    return failed


def main(argv):
    del argv
    failed = _train_parity() if _TRAIN.value else _forward_parity()
    if failed:
        print("parity FAILED: see the lines above", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    cli.run(main)
