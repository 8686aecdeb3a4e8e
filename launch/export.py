r"""Exports a model bundle as params-only safetensors, the authors' PyTorch layout, a
serialized jax.export program, or (a student) an ONNX file.

  python -m launch.export --checkpoint DIR --format safetensors --output model.safetensors
  python -m launch.export --checkpoint DIR --format official --output dpiqa.pth  # or .safetensors
  python -m launch.export --checkpoint DIR --format jax-export --output student.jaxexport \
      [--batch_size N] [--dtype bfloat16] [--platforms cpu,cuda]

--checkpoint: a bundle directory, a training workdir (its best_model/) or an exported
  .safetensors file (which holds no extras: an authors' teacher needs its bundle for `official`).
safetensors: flat variable names, the teacher's prompts as tensor `prompts`, the config in the
  file's metadata; `Scorer.load` / `launch.score --checkpoint` read it.
official: the authors' state-dict layout (torch needed for .pth). A converted checkpoint comes
  back bit for bit. Our own teachers lack the authors' unused tensors (VAE decoder, bnc1,
  classifier_dist): pass --omit_unused and load with strict=False in their code.
jax-export: weights baked in; input [B, H, W, 3] float32 in [0, 1] (B polymorphic unless
  --batch_size); outputs (score [B] on the MOS scale, quality map [B, 64, 64, 8] NHWC); described
  in OUT.json. Reload: jax.export.deserialize(open(OUT, 'rb').read()).call(images).
onnx: a student with the authors' interface (input `input` [batch, 3, S, S] float32 RGB in
  [0, 1], outputs `score` [batch, 1] = MOS / mos_scale and `map` [batch, 8, 64, 64]; the batch is
  dynamic unless --batch_size), preprocessing and MOS scale in the model's metadata; float32 only.
Exit status: 0 written, 1 the model cannot be exported so, 2 usage error.
"""


import jax.numpy as jnp
from absl import flags

from dpiqa_jax import export, inference, onnx_export

from . import cli

FORMATS = ("safetensors", "official", "jax-export", "onnx")

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Bundle directory, training workdir or exported .safetensors.",
    required=True)
_FORMAT = flags.DEFINE_enum("format", None, list(FORMATS), "Export format.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output file.", required=True)
cli.rename("out", "output")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "jax-export: fixed batch size (default "
                                   "polymorphic).", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "jax-export: compute and baked-weight dtype.")
_PLATFORMS = flags.DEFINE_list("platforms", None, "jax-export: lowering platforms (default the "
                               "current backend), e.g. cpu,cuda.")
_OMIT_UNUSED = flags.DEFINE_bool("omit_unused", False, "official: allow a teacher without the "
                                 "authors' unused tensors.")
_MOS_SCALE = flags.DEFINE_float("mos_scale", None, "jax-export: head output -> MOS factor, for "
                                "models that do not record it.")


def _export(model_bundle) -> str:
    if _FORMAT.value == "safetensors":
        export.write_params_safetensors(model_bundle, _OUTPUT.value)
    elif _FORMAT.value == "official":
        export.export_official(model_bundle, _OUTPUT.value, omit_unused=_OMIT_UNUSED.value)
    elif _FORMAT.value == "onnx":
        if _PLATFORMS.value:
            raise ValueError("--platforms applies to jax-export only")
        onnx_export.export_onnx(model_bundle, _OUTPUT.value, batch_size=_BATCH_SIZE.value,
                                dtype=_DTYPE.value, mos_scale=_MOS_SCALE.value)
    else:
        export.export_jax_program(model_bundle, _OUTPUT.value, batch_size=_BATCH_SIZE.value,
                                  dtype=jnp.dtype(_DTYPE.value), platforms=_PLATFORMS.value,
                                  mos_scale=_MOS_SCALE.value)
    return _OUTPUT.value


def main(argv):
    if len(argv) > 1:
        cli.exit_with_usage_error(f"unexpected arguments {argv[1:]}")
    try:
        model_bundle, _ = inference.resolve_model(_CHECKPOINT.value)
    except (OSError, ValueError) as err:
        cli.exit_with_usage_error(f"cannot load --checkpoint: {err}")
    return cli.write_reported("export", lambda: _export(model_bundle),
                              (OSError, ValueError, ImportError))


if __name__ == "__main__":
    cli.run(main)
