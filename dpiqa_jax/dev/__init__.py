"""Developer tools, not part of the runtime: PyTorch references, parity checks, benchmarks.

Nothing outside this package imports it (an import-linter contract in pyproject.toml checks
that); the launchers that drive it (`launch.parity`, `launch.benchmark`, `launch.onnx_check`)
import it when run. It needs the dev requirements (torch, diffusers, transformers).
"""
