"""Command-line programs; each is thin and calls into dpiqa_jax."""
