"""The house rules as machine checks, run with the test suite (and so by .ci/run).

ruff: style and import order (pyproject.toml's [tool.ruff]). import-linter: layers import
downwards only, the runtime never imports the dev tools, the library never imports the launchers
or configs (pyproject.toml's [tool.importlinter]). A failure shows the tool's own report.
"""

import subprocess
import sys

from helpers import REPO_ROOT

# import-linter has no `python -m` entry point; its console script's function, from this Python.
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; " \
               "sys.exit(lint_imports_command())"


def run_tool(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, check=False)


def test_ruff_finds_nothing():
    result = run_tool("-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept():
    result = run_tool("-c", LINT_IMPORTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout
