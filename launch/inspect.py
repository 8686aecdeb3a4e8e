r"""Sizes of a training config's model from abstract shapes (no weights are read or made).

  python -m launch.inspect --config=configs/teacher.py:koniq10k
  python -m launch.inspect --config=configs/teacher.py:koniq10k --mesh=data=2,fsdp=4

Prints one JSON line per module, `{"module": "unet", "params": 859520964}` (teacher: vae_encoder,
unet, image_adapter, text_adapter (with gamma), qfd; student: student). With --mesh it also
compiles the config's full-size train step for that mesh and prints XLA's per-device memory
(GiB): `{"memory_gib": {"peak": ..., "arguments": ..., ...}, "mesh": {...}, ...}`.
A mesh needing more devices than exist is emulated with fake CPU devices (the XLA flag must be set
before JAX starts, which is why this launcher reads --mesh itself first). Compiling the SD 1.5
step on a CPU takes minutes.
"""

import os
import re
import sys


def _fake_devices_for_mesh(argv: list[str]) -> None:
    """Sets --xla_force_host_platform_device_count to the product of an explicit --mesh."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--mesh=") else (
            argv[i + 1] if arg == "--mesh" and i + 1 < len(argv) else None)
        if value is None:
            continue
        sizes = [int(s) for s in re.findall(r"=\s*(-?\d+)", value)]
        if sizes and -1 not in sizes:
            count = 1
            for size in sizes:
                count *= size
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={count}").strip()


_fake_devices_for_mesh(sys.argv)

# pylint: disable=wrong-import-position
import json  # noqa: E402

from absl import app, flags  # noqa: E402

from dpiqa_jax.train import footprint, sharding  # noqa: E402

from . import cli  # noqa: E402

_CONFIG = cli.define_config_flag("Training config: teacher:VARIANT, student:VARIANT or a "
                                 "config file, configs/teacher.py:VARIANT.")
_MESH = flags.DEFINE_string("mesh", None, "Mesh to measure the train step on, e.g. "
                            "data=2,fsdp=4 (default: parameter counts only).")
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    for module, count in footprint.parameter_counts(config).items():
        print(json.dumps({"module": module, "params": count}), flush=True)
    if _MESH.value:
        mesh = sharding.make_mesh(_MESH.value)
        memory = footprint.train_step_memory(config, mesh)
        print(json.dumps({"memory_gib": {k: round(v, 3) for k, v in memory.items()},
                          "mesh": dict(mesh.shape), "global_batch": config.batch_size,
                          "dtype": config.dtype, "remat_policy": config.remat_policy}),
              flush=True)


if __name__ == "__main__":
    cli.run(main)
