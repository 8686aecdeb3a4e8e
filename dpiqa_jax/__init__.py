"""dpiqa_jax: DP-IQA (blind image quality from Stable Diffusion priors) in JAX/Flax.

`from dpiqa_jax import Scorer` is the scoring API (dpiqa_jax.scorer.Scorer); it is imported on
first use, so `import dpiqa_jax` (and `dpiqa --version`) does not start JAX.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Scorer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Scorer":
        from dpiqa_jax.scorer import Scorer  # pylint: disable=import-outside-toplevel
        return Scorer
    raise AttributeError(f"module 'dpiqa_jax' has no attribute {name!r}")
