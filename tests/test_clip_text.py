"""Flax CLIP text encoder vs transformers (tiny random models, fp32) and the tokenizer wrapper."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from dpiqa_jax.convert import torch_layout
from dpiqa_jax.sd import clip_text

from helpers import (
    LEGACY_EOS,
    convert_reference,
    tiny_reference,
    tiny_text_config,
    write_tiny_clip_tokenizer,
)

SEQ_LEN = 16
LENGTHS = (3, 9, SEQ_LEN - 1)  # index of EOS per row: padded batch of different lengths
ATOL = 5e-6  # measured max abs error ~5e-7 with |states| ~1.4
RTOL = 1e-5


def padded_batch(vocab_size: int, eos_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """ids [3, SEQ_LEN] (BOS, random tokens, EOS at LENGTHS, then pad) and the matching mask."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size - 2, (len(LENGTHS), SEQ_LEN))
    ids[:, 0] = vocab_size - 2
    mask = np.zeros_like(ids)
    for row, eos_at in enumerate(LENGTHS):
        ids[row, eos_at] = eos_id
        ids[row, eos_at + 1:] = pad_id
        mask[row, :eos_at + 1] = 1
    return ids.astype(np.int32), mask.astype(np.int32)


def run_reference(model, ids, mask):
    """transformers' (last_hidden_state, pooled EOS state, projected or None) as numpy."""
    inputs = dict(input_ids=torch.from_numpy(ids).long(),
                  attention_mask=None if mask is None else torch.from_numpy(mask).long())
    with_projection = isinstance(model, transformers.CLIPTextModelWithProjection)
    with torch.no_grad():
        # CLIPTextModelWithProjection does not return the pooled state; its text_model does.
        text = (model.text_model if with_projection else model)(**inputs)
        projected = model(**inputs).text_embeds.numpy() if with_projection else None
    return text.last_hidden_state.numpy(), text.pooler_output.numpy(), projected


VOCAB_SIZE = 100


@pytest.mark.parametrize("hidden_act,with_projection,eos_rule", [
    ("quick_gelu", True, "legacy"),
    ("quick_gelu", False, "first_eos"),
    ("gelu", True, "first_eos"),
    ("gelu", False, "legacy"),
])
@pytest.mark.parametrize("use_mask", [True, False])
def test_matches_transformers(hidden_act, with_projection, eos_rule, use_mask):
    eos_id = VOCAB_SIZE - 1
    # Legacy configs locate EOS by argmax of the ids; new ones by the first id == eos_token_id,
    # exercised here with pad == EOS (as CLIP's tokenizer pads).
    config = tiny_text_config(VOCAB_SIZE, hidden_act=hidden_act,
                              eos_token_id=LEGACY_EOS if eos_rule == "legacy" else eos_id)
    model = tiny_reference(config, with_projection)
    encoder, params = convert_reference(model)
    ids, mask = padded_batch(VOCAB_SIZE, eos_id=eos_id, pad_id=eos_id)
    mask = mask if use_mask else None

    ours = encoder.apply({"params": params}, ids, mask)
    hidden, pooled, projected = run_reference(model, ids, mask)

    np.testing.assert_allclose(ours.last_hidden_state, hidden, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(ours.pooled, pooled, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(ours.pooled, hidden[np.arange(len(LENGTHS)), list(LENGTHS)],
                               atol=ATOL, rtol=RTOL)
    if with_projection:
        np.testing.assert_allclose(ours.projected, projected, atol=ATOL, rtol=RTOL)
    else:
        assert ours.projected is None


def test_mask_leaves_real_tokens_unchanged():
    """Causal attention: masking the padding after EOS must not change the real tokens' states."""
    model = tiny_reference(tiny_text_config(VOCAB_SIZE), with_projection=False)
    encoder, params = convert_reference(model)
    ids, mask = padded_batch(VOCAB_SIZE, eos_id=VOCAB_SIZE - 1, pad_id=VOCAB_SIZE - 1)
    masked = encoder.apply({"params": params}, ids, mask).last_hidden_state
    unmasked = encoder.apply({"params": params}, ids).last_hidden_state
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(masked)[real], np.asarray(unmasked)[real],
                               atol=1e-6, rtol=1e-6)
    # ...while the padding positions do see the mask (they may attend only to real tokens).
    assert np.abs(np.asarray(masked)[~real] - np.asarray(unmasked)[~real]).max() > 1e-2


def test_bfloat16_compute_close_to_fp32():
    model = tiny_reference(tiny_text_config(VOCAB_SIZE), with_projection=True)
    encoder, params = convert_reference(model)
    ids, mask = padded_batch(VOCAB_SIZE, eos_id=VOCAB_SIZE - 1, pad_id=VOCAB_SIZE - 1)
    reference = np.asarray(encoder.apply({"params": params}, ids, mask).projected)
    bf16 = jax.jit(encoder.clone(dtype=jnp.bfloat16).apply)({"params": params}, ids, mask)
    assert bf16.projected.dtype == jnp.bfloat16
    scale = np.abs(reference).max()
    np.testing.assert_allclose(np.asarray(bf16.projected, np.float32) / scale, reference / scale,
                               atol=3e-2)


def test_param_names_mirror_transformers_keys():
    model = tiny_reference(tiny_text_config(VOCAB_SIZE), with_projection=True)
    _, params = convert_reference(model)
    assert params["text_model"]["encoder"]["layers_1"]["self_attn"]["q_proj"]["kernel"].shape == (
        32, 32)
    assert params["text_model"]["embeddings"]["token_embedding"]["embedding"].shape == (
        VOCAB_SIZE, 32)
    assert params["text_projection"]["kernel"].shape == (32, 24)
    assert "bias" not in params["text_projection"]


def test_clip_model_state_dict_converts_with_vision_keys_ignored():
    """A full CLIPModel checkpoint: the text part converts once the vision tower is ignored."""
    text = tiny_text_config(VOCAB_SIZE).to_dict()
    vision = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                  image_size=8, patch_size=4)
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=24)).eval()
    config = clip_text.CLIPTextConfig.from_transformers(clip.config.to_dict())
    assert config.projection_dim == 24 and config.hidden_size == 32
    encoder = clip_text.CLIPTextEncoder(config, with_projection=True)
    target = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    state = {k: v.numpy() for k, v in clip.state_dict().items()}
    ignore = [r"position_ids$", r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$"]
    with pytest.raises(torch_layout.StateDictMismatchError, match="vision_model"):
        torch_layout.torch_to_flax(state, target, ignore=[r"position_ids$"])
    params = torch_layout.torch_to_flax(state, target, ignore=ignore)["params"]

    ids, mask = padded_batch(VOCAB_SIZE, eos_id=VOCAB_SIZE - 1, pad_id=VOCAB_SIZE - 1)
    with torch.no_grad():
        features = clip.get_text_features(input_ids=torch.from_numpy(ids).long(),
                                          attention_mask=torch.from_numpy(mask).long())
    features = getattr(features, "pooler_output", features).numpy()
    ours = encoder.apply({"params": params}, ids, mask)
    np.testing.assert_allclose(ours.projected, features, atol=ATOL, rtol=RTOL)


def test_config_from_sd_text_encoder_json():
    sd_text_encoder = {  # SD 1.5 text_encoder/config.json (abridged to the keys we read + extras)
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
        "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
        "projection_dim": 768, "torch_dtype": "float32", "vocab_size": 49408}
    config = clip_text.CLIPTextConfig.from_transformers(sd_text_encoder)
    assert config == clip_text.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, eos_token_id=2, projection_dim=768)


def test_config_text_config_dict_overrides_text_config():
    """Old CLIPModel configs (openai/clip-vit-large-patch14) carry text_config and
    text_config_dict; the latter wins, and the top-level projection_dim is used."""
    config = clip_text.CLIPTextConfig.from_transformers({
        "model_type": "clip", "projection_dim": 768,
        "text_config": {"hidden_size": 512, "num_attention_heads": 8, "eos_token_id": 2},
        "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072,
                             "num_attention_heads": 12, "projection_dim": 768}})
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads) == (
        768, 3072, 12)
    assert (config.eos_token_id, config.projection_dim, config.vocab_size) == (2, 768, 49408)


@pytest.mark.parametrize("cfg,message", [
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"model_type": "bert"}, "model_type='bert'"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size=30"),
])
def test_config_rejects_unsupported_values(cfg, message):
    with pytest.raises(ValueError, match=message):
        clip_text.CLIPTextConfig.from_transformers(cfg)


def test_projection_requested_without_projection_dim_raises():
    config = clip_text.CLIPTextConfig.from_transformers({"projection_dim": None})
    encoder = clip_text.CLIPTextEncoder(config, with_projection=True)
    with pytest.raises(ValueError, match="projection_dim"):
        jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))


def test_tokenizer_pads_truncates_and_masks(tmp_path):
    vocab = write_tiny_clip_tokenizer(tmp_path)
    tokenize = clip_text.load_tokenizer(tmp_path)
    tokens = tokenize(["A photo of quality", "a " * 100])
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    expected = [bos, vocab["a</w>"], vocab["photo</w>"], vocab["o"], vocab["f</w>"],
                vocab["quality</w>"], eos]
    assert tokens.input_ids.dtype == np.int32 and tokens.input_ids.shape == (2, 77)
    np.testing.assert_array_equal(tokens.input_ids[0, :7], expected)
    np.testing.assert_array_equal(tokens.input_ids[0, 7:], eos)  # CLIP pads with <|endoftext|>
    np.testing.assert_array_equal(tokens.attention_mask[0], [1] * 7 + [0] * 70)
    assert tokens.input_ids[1, 0] == bos and tokens.input_ids[1, -1] == eos  # truncated row
    assert tokens.attention_mask[1].all()


def test_tokenizer_missing_files_names_directory(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*merges.txt"):
        clip_text.load_tokenizer(tmp_path)


def test_text_model_prefix_added_only_to_bare_text_model_keys():
    state = {"embeddings.token_embedding.weight": 1, "encoder.layers.0.mlp.fc1.bias": 2,
             "final_layer_norm.weight": 3, "text_model.final_layer_norm.bias": 4,
             "text_projection.weight": 5}
    assert clip_text.with_text_model_prefix(state) == {
        "text_model.embeddings.token_embedding.weight": 1,
        "text_model.encoder.layers.0.mlp.fc1.bias": 2, "text_model.final_layer_norm.weight": 3,
        "text_model.final_layer_norm.bias": 4, "text_projection.weight": 5}
