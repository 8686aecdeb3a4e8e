"""Command-line conventions shared by every launcher.

- One vocabulary: `--checkpoint` (model path), `--output` (output path), `--batch_size`,
  `--dataset`, `--config`. Old spellings stay for one release through `rename`, which keeps the
  old flag as an alias and prints a one-line note when it is used.
- Dashed and underscored flag names are the same flag (`--batch-size` is `--batch_size`).
- `--help` / `-h` / `--helpshort` print the launcher's docstring and every flag it reads
  (including flags adopted from shared flag modules) and exit 0; `--helpfull` lists all flags.
- Exit status 2 means the command line itself is wrong (a bad, missing or misspelt flag, a config
  typo, a model path that does not exist): one line on stderr names the flag and the fix, with
  no traceback, as for most Unix tools (absl alone exits 1 and prints the usage).
- `--config` names a training config: `teacher:VARIANT` / `student:VARIANT` (the config modules
  shipped with the package, usable from any folder) or a file, `configs/teacher.py:VARIANT`.

Each launcher ends with `if __name__ == "__main__": cli.run(main)`; the `dpiqa` console
(launch/console.py) calls `run` the same way.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

# The flags this module defines for a launcher (aliases, --config) are that launcher's key flags.
flags.disclaim_key_flags()

USAGE_ERROR = 2
SHORT_HELP_ARGS = ("-h", "-?", "--help", "--helpshort")
FULL_HELP_ARG = "--helpfull"
# The config modules shipped beside the launchers: `configs` in the repository, and
# `dpiqa_jax.configs` in the installed package (pyproject.toml maps both folders into dpiqa_jax).
_PARENT_PACKAGE = (__package__ or "").rpartition(".")[0]
CONFIGS_PACKAGE = f"{_PARENT_PACKAGE}.configs" if _PARENT_PACKAGE else "configs"
NAMED_CONFIGS = ("teacher", "student")

_renamed: dict[str, str] = {}
_program = os.path.basename(sys.argv[0]) if sys.argv else "dpiqa"


def rename(old: str, new: str) -> None:
    """Keeps `--old` working as an alias of `--new` for one release (a note says so when used)."""
    flags.DEFINE_alias(old, new)
    _renamed[old] = new


def config_module(name: str) -> types.ModuleType:
    """The shipped config module `name` (teacher, student, common), wherever it is installed."""
    return importlib.import_module(f"{CONFIGS_PACKAGE}.{name}")


def exit_with_usage_error(message: str) -> NoReturn:
    """Prints `message` as one line on stderr, with the help hint, and exits with status 2."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    sys.stderr.write(f"{_program}: {line} (see --help)\n")
    sys.exit(USAGE_ERROR)


def write_reported(action: str, write: Callable[[], str],
                   errors: tuple[type[BaseException], ...],
                   describe: Callable[[BaseException], str] = str) -> int:
    """Runs `write` (it returns the path it wrote) and says so on stderr: `wrote PATH` and 0, or
    `{action} failed: {describe(error)}` and 1 for one of `errors`."""
    try:
        path = write()
    except errors as err:
        print(f"{action} failed: {describe(err)}", file=sys.stderr)
        return 1
    print(f"wrote {path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- argv


def _flag_name(arg: str) -> str | None:
    """The name in `--name` / `--name=value` (None for values, `-h`, `--` and config overrides)."""
    if not arg.startswith("--") or arg == "--":
        return None
    name = arg[2:].split("=", 1)[0]
    return None if "." in name else name


def normalize_argv(argv: list[str]) -> list[str]:
    """`argv` with dashed flag names underscored and renamed flags under their new name.

    Values, positional arguments, config overrides (`--config.a.b=1`) and everything after a bare
    `--` are left as they are.
    """
    normalized = list(argv[:1])
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--":
            normalized += [arg, *rest]
            break
        name = _flag_name(arg)
        if name is None:
            normalized.append(arg)
            continue
        new_name = name.replace("-", "_")
        if new_name in _renamed:
            sys.stderr.write(f"{_program}: note: --{new_name} is now --{_renamed[new_name]}; "
                             "the old spelling is kept for one release\n")
            new_name = _renamed[new_name]
        normalized.append("--" + new_name + arg[2 + len(name):])
    return normalized


def _config_error_line(error: Exception, argv: list[str]) -> str:
    """One line for a failed `--config.key=value` override, keeping ml_collections' suggestion."""
    message: Any = error
    while isinstance(message, BaseException) and message.args:  # AttributeError(KeyError(str))
        message = message.args[0]
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    key = lines[0].strip("'\"") if lines else ""
    culprit = next((arg.split("=", 1)[0] for arg in argv
                    if arg.startswith("--config.") and key and f".{key}" in arg), "--config")
    suggestion = " ".join(lines[1:])
    return f"{culprit}: no config field {key!r}" + (f"; {suggestion}" if suggestion else "")


def parse_flags(argv: list[str]) -> list[str]:
    """`app.run`'s flags_parser: absl's parsing, with one line and exit status 2 on any error."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        exit_with_usage_error(str(error))
    except (AttributeError, KeyError) as error:  # ml_collections: an unknown config field
        exit_with_usage_error(_config_error_line(error, argv))
    except (TypeError, ValueError) as error:  # ml_collections: an override of the wrong type
        exit_with_usage_error(f"--config override: {error}")


# --------------------------------------------------------------------------- help


def _module_name(main: Callable[..., Any]) -> str:
    """The name absl registered `main`'s module flags under (sys.argv[0] for `python -m`)."""
    return sys.argv[0] if main.__module__ == "__main__" else main.__module__


def help_text(main: Callable[..., Any], full: bool = False) -> str:
    """The launcher's docstring and its flags (every flag with `full`)."""
    doc = (sys.modules[main.__module__].__doc__ or "").strip()
    if full:
        return f"{doc}\n\n{flags.FLAGS.get_help()}\n"
    return f"{doc}\n\nflags:\n{flags.FLAGS.module_help(_module_name(main))}\n"


def _help_requested(argv: list[str]) -> str | None:
    for arg in argv[1:]:
        if arg == "--":
            return None
        if arg in SHORT_HELP_ARGS or arg == FULL_HELP_ARG:
            return arg
    return None


# --------------------------------------------------------------------------- running


def run(main: Callable[[list[str]], Any], program: str | None = None) -> NoReturn:
    """Runs a launcher's `main` under the conventions above (argv from sys.argv)."""
    global _program
    _program = program or _program_of(main)
    request = _help_requested(sys.argv)
    if request is not None:
        sys.stdout.write(help_text(main, full=request == FULL_HELP_ARG))
        sys.exit(0)
    sys.argv[1:] = normalize_argv(sys.argv)[1:]

    def main_with_usage_errors(argv: list[str]) -> Any:
        try:
            return main(argv)
        except app.UsageError as error:
            exit_with_usage_error(str(error))

    app.run(main_with_usage_errors, flags_parser=parse_flags)


def _program_of(main: Callable[..., Any]) -> str:
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else os.path.basename(sys.argv[0])
    return f"python -m {module}" if module.startswith("launch.") else module


# --------------------------------------------------------------------------- --config


class _ConfigParser(config_flags_impl.ConfigFileFlagParser):
    """`teacher:VARIANT` imports the shipped config module; a path goes through ml_collections.

    A path to one of the shipped config files is imported as its module too, so it works the
    same in the repository and in the installed package.
    """

    def parse(self, path: str) -> Any:
        location, colon, variant = path.partition(":")
        name = _shipped_config_name(location)
        if name is None:
            if not os.path.isfile(location):
                raise ValueError(f"{location}: no such config file; name a shipped config "
                                 f"({', '.join(NAMED_CONFIGS)}, e.g. teacher:tiny) or a .py file")
            try:
                return super().parse(path)
            except (TypeError, ValueError) as error:  # ml_collections appends a traceback
                raise ValueError(_last_line(error)) from None
        config = config_module(name).get_config(variant if colon else None)
        config.lock()
        return config


def _shipped_config_name(location: str) -> str | None:
    if location in NAMED_CONFIGS:
        return location
    stem = os.path.splitext(os.path.basename(location))[0]
    if stem not in NAMED_CONFIGS or not os.path.isfile(location):
        return None
    shipped = os.path.dirname(importlib.import_module(CONFIGS_PACKAGE).__file__)
    return stem if os.path.samefile(os.path.dirname(os.path.abspath(location)), shipped) else None


def _last_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def define_config_flag(help_string: str) -> flags.FlagHolder:
    """`--config`: a locked training config, `teacher:VARIANT` or `path/to/config.py:VARIANT`."""
    holder = config_flags.DEFINE_config_file("config", None, help_string, lock_config=True)
    flags.FLAGS["config"].parser = _ConfigParser(name="config", lock_config=True)
    return holder
