"""Stable Diffusion 1.5 components (UNet, VAE encoder, CLIP text encoder) as Flax modules."""
