"""Parity of our Flax SD 1.5 modules with diffusers/transformers (PyTorch), one JSON line each.

  python -m launch.parity --size tiny
  python -m launch.parity --size sd15 --res 128          # full size, random weights, ~10 GiB RAM
  python -m launch.parity --size sd15 --res 512 --sd /path/to/stable-diffusion-v1-5

Prints {"module", "params", "params_torch", "max_abs_err", "max_rel_err", "dtype"} per module and
dtype (fp32 and bf16; bf16 computes in bf16 against the fp32 reference). Exits 1 when an fp32
module's max_rel_err (relative to the reference's max magnitude) exceeds 1e-3 or when parameter
counts differ. Needs the dev requirements (torch, diffusers, transformers).
"""

import sys

from absl import flags

from dpiqa_jax.sd import parity

from . import cli

_SIZE = flags.DEFINE_enum("size", "tiny", ["tiny", "sd15"], "Reference model size.")
_RES = flags.DEFINE_integer("res", 64, "Image side in pixels (latent side is res/8).")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Images per batch (the context is broadcast).",
                              lower_bound=1)
cli.rename("batch", "batch_size")
_SD = flags.DEFINE_string("sd", None, "A real SD 1.5 diffusers directory instead of random weights.")


def main(argv):
    del argv
    failed = False
    for result in parity.run_parity(_SIZE.value, _RES.value, _SD.value, _BATCH.value):
        print(result.to_json(), flush=True)
        failed |= result.failed()
    if failed:
        print("parity FAILED: see the lines above", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    cli.run(main)
