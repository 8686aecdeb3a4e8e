"""Package layout (the metadata is in pyproject.toml).

The launchers (launch/) and the training configs (configs/) are installed inside the package, as
dpiqa_jax.launch and dpiqa_jax.configs, so nothing with a generic top-level name enters
site-packages; in the repository they stay `launch` and `configs` (`python -m launch.train`).
The `dev` extra is requirements-dev.txt without its `-r requirements.txt` line.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def requirements(file_name: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / file_name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-r")]


setup(
    packages=find_packages(include=["dpiqa_jax", "dpiqa_jax.*"]) + ["dpiqa_jax.launch",
                                                                   "dpiqa_jax.configs"],
    package_dir={"dpiqa_jax.launch": "launch", "dpiqa_jax.configs": "configs"},
    extras_require={"dev": requirements("requirements-dev.txt")},
)
