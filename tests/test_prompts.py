"""The DP-IQA prompt list, prompt embedding (vs transformers, tiny model) and its cache files."""

import json

import numpy as np
import pytest
import torch
from absl import flags

from dpiqa_jax import prompts
from dpiqa_jax.sd import clip_text

from helpers import convert_reference, tiny_reference, tiny_text_config, write_tiny_clip_tokenizer

ATOL = 5e-6
RTOL = 1e-5


def test_prompt_list_order_and_content():
    prompt_list = prompts.dpiqa_prompts()
    assert len(prompt_list) == prompts.NUM_PROMPTS == 1485
    assert len(set(prompt_list)) == 1485
    assert prompt_list[0] == ("a photo of a animal with jpeg2000 compression artifacts, "
                              "which is of bad quality")
    assert prompt_list[-1] == ("a photo of a others with other realistic artifacts, "
                               "which is of perfect quality")
    # Quality is the outer loop, distortion the inner one.
    assert all(p.endswith("which is of bad quality") for p in prompt_list[:297])
    assert prompt_list[297].endswith("which is of poor quality")
    assert prompt_list[1] == ("a photo of a animal with jpeg compression artifacts, "
                              "which is of bad quality")
    assert prompt_list[33].startswith("a photo of a cityscape with jpeg2000 compression")
    assert "a photo of a still_life with fnoise artifacts, which is of fair quality" in prompt_list


def test_prompt_list_hash_is_order_sensitive():
    prompt_list = prompts.dpiqa_prompts()
    digest = prompts.prompt_list_hash(prompt_list)
    assert len(digest) == 64 and digest == prompts.prompt_list_hash(list(prompt_list))
    assert digest != prompts.prompt_list_hash(prompt_list[1:] + prompt_list[:1])


@pytest.fixture(name="tiny_clip")
def fixture_tiny_clip(tmp_path):
    """A tiny CLIPTextModelWithProjection + tokenizer on the tiny byte-level vocabulary."""
    vocab = write_tiny_clip_tokenizer(tmp_path)
    config = tiny_text_config(len(vocab), eos_token_id=vocab["<|endoftext|>"])
    model = tiny_reference(config, with_projection=True)
    return model, clip_text.load_tokenizer(tmp_path), tmp_path


# 6 prompts of different lengths; with batch_size=4 the last batch is a padded one.
SAMPLE_PROMPTS = ["a photo"] + prompts.dpiqa_prompts()[::371]


def _reference_states(model, tokens):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.input_ids).long(),
                    attention_mask=torch.from_numpy(tokens.attention_mask).long())
    return out.last_hidden_state.numpy(), out.text_embeds.numpy()


def test_embed_prompts_matches_transformers(tiny_clip):
    model, tokenize, _ = tiny_clip
    encoder, params = convert_reference(model)
    tokens = tokenize(SAMPLE_PROMPTS)
    assert len(set(tokens.attention_mask.sum(1))) > 1  # the batch really is padded unevenly
    hidden, text_embeds = _reference_states(model, tokens)
    mask = tokens.attention_mask[:, :, None].astype(np.float64)
    mean_over_real_tokens = (hidden * mask).sum(1) / mask.sum(1)

    projected = prompts.embed_prompts(encoder, params, tokenize, SAMPLE_PROMPTS,
                                      prompts.CLIP_PROJECTED, batch_size=4)
    mean_pooled = prompts.embed_prompts(encoder, params, tokenize, SAMPLE_PROMPTS,
                                        prompts.MEAN_POOLED, batch_size=4)

    assert projected.shape == (6, 24) and projected.dtype == np.float32
    assert mean_pooled.shape == (6, 32) and mean_pooled.dtype == np.float32
    np.testing.assert_allclose(projected, text_embeds, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(mean_pooled, mean_over_real_tokens, atol=ATOL, rtol=RTOL)


def test_embed_prompts_projected_needs_projection(tiny_clip):
    model, tokenize, _ = tiny_clip
    encoder, params = convert_reference(model)
    bare = encoder.clone(with_projection=False)
    bare_params = {k: v for k, v in params.items() if k != "text_projection"}
    with pytest.raises(ValueError, match="text_projection"):
        prompts.embed_prompts(bare, bare_params, tokenize, SAMPLE_PROMPTS, prompts.CLIP_PROJECTED)
    with pytest.raises(ValueError, match="'pooled'"):
        prompts.embed_prompts(encoder, params, tokenize, SAMPLE_PROMPTS, "pooled")


def test_embeddings_round_trip_with_sidecar(tmp_path):
    prompt_list = prompts.dpiqa_prompts()
    embeddings = np.random.default_rng(0).normal(size=(1485, 8)).astype(np.float32)
    path = tmp_path / "prompts.npy"
    sidecar = prompts.save_prompt_embeddings(path, embeddings, prompt_list, mode="mean_pooled",
                                             model_directory="/m", dtype="float32")
    assert sidecar == str(tmp_path / "prompts.json")
    loaded, metadata = prompts.load_prompt_embeddings(path)
    np.testing.assert_array_equal(loaded, embeddings)
    assert metadata == {"mode": "mean_pooled", "model_directory": "/m", "dtype": "float32",
                        "prompt_count": 1485, "shape": [1485, 8],
                        "prompt_sha256": prompts.prompt_list_hash(prompt_list)}
    with pytest.raises(ValueError, match="another prompt list"):
        prompts.load_prompt_embeddings(path, prompt_list[::-1])


def test_launcher_writes_embeddings_and_sidecar(tiny_clip, tmp_path):
    launcher = pytest.importorskip("launch.embed_prompts")  # needs the lead's sd.loading
    model, tokenize, model_dir = tiny_clip
    model.save_pretrained(model_dir)
    out = tmp_path / "out" / "prompts.npy"
    out.parent.mkdir()
    flags.FLAGS(["embed_prompts", f"--clip={model_dir}", "--mode=clip_projected", f"--out={out}",
                 "--batch=512"])
    try:
        launcher.main([])
    finally:
        flags.FLAGS.unparse_flags()
    embeddings = np.load(out)
    assert embeddings.shape == (1485, 24) and embeddings.dtype == np.float32
    metadata = json.loads((tmp_path / "out" / "prompts.json").read_text())
    assert metadata["prompt_sha256"] == prompts.prompt_list_hash(prompts.dpiqa_prompts())
    assert (metadata["mode"], metadata["prompt_count"]) == ("clip_projected", 1485)
    tokens = tokenize(prompts.dpiqa_prompts()[:3])
    _, text_embeds = _reference_states(model, tokens)
    np.testing.assert_allclose(embeddings[:3], text_embeds, atol=ATOL, rtol=RTOL)
