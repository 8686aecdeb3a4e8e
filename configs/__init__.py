"""Training configs (ml_collections): `configs/teacher.py:VARIANT`, `configs/student.py:VARIANT`."""
