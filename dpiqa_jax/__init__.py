"""dpiqa_jax: DP-IQA (blind image quality from Stable Diffusion priors) in JAX/Flax."""
