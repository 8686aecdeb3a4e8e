"""Training configs (ml_collections): `--config=teacher:VARIANT` / `student:VARIANT` (by name, also
when installed as dpiqa_jax.configs), or by path, `configs/teacher.py:VARIANT`."""
