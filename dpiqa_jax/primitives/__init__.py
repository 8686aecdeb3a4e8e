"""The lowest layer: convolutions shaped for XLA, torch-default initialisers, torch-exact resizing.

`sd/` and `models/` build on these; nothing here imports another part of the package.
"""
