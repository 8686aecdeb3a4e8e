r"""Embeds the 1485 DP-IQA prompts with a CLIP text encoder and caches them as .npy + JSON sidecar.

  python -m launch.embed_prompts --clip /models/clip-vit-large-patch14 \
      --mode clip_projected --output prompts.npy

`--clip` is a transformers directory (config.json + weights): a CLIP model for `clip_projected`
(the authors' vectors), or SD's `text_encoder/` for `mean_pooled` (then pass `--tokenizer` = SD's
`tokenizer/`). The output is float32 [1485, D]; `prompts.json` beside it records its provenance.
"""

from absl import flags, logging
import jax.numpy as jnp

from dpiqa_jax import prompts
from dpiqa_jax.sd import clip_text, loading

from . import cli

_CLIP = flags.DEFINE_string("clip", None, "transformers CLIP text encoder directory.",
                            required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None,
                                 "directory with vocab.json/merges.txt (default: --clip).")
_MODE = flags.DEFINE_enum("mode", prompts.CLIP_PROJECTED, prompts.EMBEDDING_MODES,
                          "Prompt vector: projected EOS state or mean of real-token states.")
_OUT = flags.DEFINE_string("output", None, "Output .npy path.", required=True)
cli.rename("out", "output")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Prompts per forward pass.", lower_bound=1)
cli.rename("batch", "batch_size")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def main(argv):
    del argv
    dtype = jnp.dtype(_DTYPE.value)
    tokenizer_dir = _TOKENIZER.value or _CLIP.value
    encoder, params = loading.load_clip_text_encoder(_CLIP.value, dtype=dtype, param_dtype=dtype)
    tokenize = clip_text.load_tokenizer(tokenizer_dir)
    prompt_list = prompts.dpiqa_prompts()
    embeddings = prompts.embed_prompts(encoder, params, tokenize, prompt_list, _MODE.value,
                                       _BATCH.value, progress=True)
    sidecar = prompts.save_prompt_embeddings(
        _OUT.value, embeddings, prompt_list, model_directory=_CLIP.value,
        tokenizer_directory=tokenizer_dir, mode=_MODE.value, dtype=_DTYPE.value)
    logging.info("wrote %s %s and %s", _OUT.value, embeddings.shape, sidecar)


if __name__ == "__main__":
    cli.run(main)
