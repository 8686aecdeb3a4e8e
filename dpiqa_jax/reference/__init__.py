"""PyTorch reference models (dev only: needs torch and diffusers from requirements-dev.txt)."""
