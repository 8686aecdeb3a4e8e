"""The `dpiqa` command: one console whose subcommands are the launchers.

  dpiqa score --checkpoint models/student --output scores.csv photos/
  dpiqa train --config teacher:tiny --workdir /tmp/teacher_tiny
  dpiqa --help | dpiqa --version | dpiqa COMMAND --help

`dpiqa COMMAND ARGS` is `python -m launch.COMMAND ARGS` (dashes or underscores in COMMAND).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from typing import NoReturn

import dpiqa_jax

from . import cli

COMMANDS = ("score", "evaluate", "train", "run_splits", "convert", "export", "embed_prompts",
            "build_dataset", "make_splits", "cache_teacher_maps", "inspect", "demo", "parity",
            "benchmark", "onnx_check")
PROGRAM = "dpiqa"


def summary(command: str) -> str:
    """The first sentence of the launcher's docstring, read without importing it."""
    spec = importlib.util.find_spec(f"{__package__}.{command}")
    with open(spec.origin, encoding="utf-8") as source:
        doc = ast.get_docstring(ast.parse(source.read())) or ""
    sentence = []
    for line in doc.splitlines():
        if not line.strip():
            break
        sentence.append(line.strip())
        if line.rstrip().endswith("."):
            break
    return " ".join(sentence)


def usage() -> str:
    width = max(len(command) for command in COMMANDS)
    lines = [f"usage: {PROGRAM} COMMAND [FLAGS] [ARGS]   ({PROGRAM} COMMAND --help for its flags)",
             "", "commands:"]
    lines += [f"  {command.replace('_', '-'):<{width}}  {summary(command)}" for command in COMMANDS]
    lines += ["", "  --version  print the version", "  --help     this list"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> NoReturn:
    argv = list(sys.argv if argv is None else argv)
    first = argv[1] if len(argv) > 1 else None
    if first is None:
        sys.stderr.write(usage())
        sys.exit(cli.USAGE_ERROR)
    if first in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0)
    if first == "--version":
        print(f"{PROGRAM} {dpiqa_jax.__version__}")
        sys.exit(0)
    command = first.replace("-", "_")
    if command not in COMMANDS:
        sys.stderr.write(f"{PROGRAM}: unknown command {first!r}; choose one of "
                         f"{', '.join(c.replace('_', '-') for c in COMMANDS)} (see --help)\n")
        sys.exit(cli.USAGE_ERROR)
    # Set before the import: a launcher may read its arguments while it loads (launch.inspect).
    sys.argv = [f"{PROGRAM} {command.replace('_', '-')}", *argv[2:]]
    module = importlib.import_module(f"{__package__}.{command}")
    cli.run(module.main, program=sys.argv[0])
