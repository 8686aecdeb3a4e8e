"""Attention kernels: query-chunked attention is plain attention, with less training memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiqa_jax.sd.attention import AttentionKernel, dot_product_attention

HEADS, WIDTH = 2, 8
KV_TOKENS = 40
# Chunking splits the queries only, but each chunk's shape may get its own dot kernel, summing the
# 8-wide scores and the 40 softmax-weighted values in another order. fp32 sums of n terms in two
# orders differ by at most ~n u sum|terms| (u = 6e-8): for n = 40 values |v| < 5 (these normals)
# 1.2e-5 at worst, ~sqrt(n) u 5 = 2e-6 typically; a chunking bug is O(1).
VALUE_ATOL = 1.5e-5
# Key and value gradients also sum over the up to 100 queries: 100 u 5 = 3e-5 at worst.
GRAD_ATOL = 5e-5


def _qkv(batch: int, tokens: int, kv_batch: int, kv_tokens: int) -> tuple[jax.Array, ...]:
    rng = np.random.default_rng(0)
    query = rng.standard_normal((batch, tokens, HEADS, WIDTH), np.float32)
    key, value = (rng.standard_normal((kv_batch, kv_tokens, HEADS, WIDTH), np.float32)
                  for _ in range(2))
    return jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)


def _loss(kernel: AttentionKernel):
    weights = jnp.linspace(-1.0, 1.0, HEADS * WIDTH).reshape(HEADS, WIDTH)
    return lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, kernel=kernel) * weights)


@pytest.mark.parametrize("kv_batch, tokens, chunk", [(2, 96, 32), (2, 100, 32), (1, 50, 16)],
                         ids=["whole-chunks", "padded-last-chunk", "shared-context-folded"])
def test_query_chunks_give_the_same_values_and_gradients(kv_batch, tokens, chunk):
    args = _qkv(2, tokens, kv_batch, KV_TOKENS)
    plain, chunked = AttentionKernel(), AttentionKernel(query_chunk=chunk)
    np.testing.assert_allclose(dot_product_attention(*args, kernel=chunked),
                               dot_product_attention(*args, kernel=plain), rtol=0,
                               atol=VALUE_ATOL)
    grads = [jax.grad(_loss(kernel), argnums=(0, 1, 2))(*args) for kernel in (plain, chunked)]
    for expected, got in zip(*grads, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=GRAD_ATOL)


def _gradient_temporaries(kernel: AttentionKernel) -> int:
    args = _qkv(1, 2048, 1, 2048)
    compiled = jax.jit(jax.grad(_loss(kernel), argnums=(0, 1, 2))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_query_chunks_shrink_the_backward_pass_memory():
    """2048x2048 logits per head are 32 MiB in fp32; with 256-query chunks only one eighth of them
    need to be alive at once."""
    plain = _gradient_temporaries(AttentionKernel())
    chunked = _gradient_temporaries(AttentionKernel(query_chunk=256))
    print(f"gradient temporaries: plain {plain / 2**20:.1f} MiB, chunked {chunked / 2**20:.1f} MiB")
    assert plain > 2 * 2048 * 2048 * HEADS * 4  # the logits and their softmax are both kept
    assert chunked < plain / 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(implementation="flash"), "expected one of"),
    (dict(query_chunk=-1), "expected >= 0"),
    (dict(implementation="cudnn", query_chunk=512), "needs implementation 'xla'"),
])
def test_bad_kernel_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionKernel(**kwargs)


def test_cudnn_refuses_float32_inputs_before_reaching_the_gpu():
    with pytest.raises(ValueError, match="cuDNN attention needs bf16 or fp16 inputs, got float32"):
        dot_product_attention(*_qkv(1, 8, 1, 8), kernel=AttentionKernel("cudnn"))
