"""Training the DP-IQA teacher and the distilled student (`dpiqa_jax.train.run`)."""
