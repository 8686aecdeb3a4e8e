"""Command-line conventions shared by the scoring, conversion and export launchers.

Exit status 2 means the command line itself is wrong (a bad or missing flag, no inputs, a model
path that does not exist), as for most Unix tools; absl exits 1 on flag errors, hence the parser.
"""

from __future__ import annotations

import sys
import textwrap
from typing import NoReturn

from absl import flags

USAGE_ERROR = 2


def exit_with_usage_error(message: str) -> NoReturn:
    """Prints `message` and the help hint to stderr and exits with status 2."""
    if "\n" in message:
        message = "\n" + textwrap.indent(message, "  ")
    sys.stderr.write(f"{sys.argv[0]}: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
    """`app.run`'s flags_parser: absl's parsing, with exit status 2 on a flag error."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        exit_with_usage_error(f"flags parsing error: {error}")
