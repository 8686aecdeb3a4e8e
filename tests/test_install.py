"""The package as a user gets it: `pip install .` into a fresh virtualenv, then used from a folder
outside the repository (the import must come from the virtualenv, not from the checkout).

Offline: the virtualenv sees this interpreter's site-packages (jax, flax, ... and setuptools, the
build backend) and the install neither resolves dependencies nor builds in isolation.
"""

import os
import shutil
import subprocess
import sys
import venv

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_IGNORED = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "runs",
                                      "demo_out", ".whl")


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    # A clean environment: no PYTHONPATH pointing back at the checkout.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_installed_package_works_from_another_folder(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=COPY_IGNORED)  # the build writes into its source tree
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
          str(source)], cwd=str(elsewhere))

    imported = _run([python, "-c", "import dpiqa_jax; print(dpiqa_jax.__version__); "
                     "print(dpiqa_jax.__file__)"], cwd=str(elsewhere)).stdout.split()
    assert imported[1].startswith(str(env_dir)), imported  # not the checkout
    sys.path.insert(0, REPO)
    try:
        import dpiqa_jax  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.remove(REPO)
    assert imported[0] == dpiqa_jax.__version__

    scorer = _run([python, "-c", "from dpiqa_jax import Scorer; print(Scorer.__module__)"],
                  cwd=str(elsewhere)).stdout.strip()
    assert scorer == "dpiqa_jax.scorer"

    console = str(env_dir / "bin" / "dpiqa")
    assert _run([console, "--version"], cwd=str(elsewhere)).stdout.strip() == (
        f"dpiqa {dpiqa_jax.__version__}")
    listing = _run([console, "--help"], cwd=str(elsewhere)).stdout
    for command in ("score", "train", "convert", "export", "evaluate"):
        assert f"\n  {command} " in listing, command
    train_help = _run([console, "train", "--help"], cwd=str(elsewhere)).stdout
    assert "  --workdir:" in train_help and "  --multihost:" in train_help

    # The shipped configs by name, from a folder without configs/: loaded, locked, overridable.
    check = ("import sys; sys.argv = ['dpiqa train', '--config=teacher:tiny', "
             "'--config.seed=7', '--workdir=w']; from dpiqa_jax.launch import train; "
             "from absl import flags; flags.FLAGS(sys.argv); "
             "print(train._CONFIG.value.seed, train._CONFIG.value.variant)")
    assert _run([python, "-c", check], cwd=str(elsewhere)).stdout.split() == ["7", "tiny"]

    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=str(elsewhere)).stdout.strip()
    installed = set(os.listdir(site))
    assert not installed & {"launch", "configs"}, sorted(installed)
