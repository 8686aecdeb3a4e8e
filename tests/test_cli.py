"""The command-line conventions of launch/cli.py in every launcher and the `dpiqa` console:
--help exits 0 and lists every flag the command reads, usage errors exit 2 with one line, old
spellings and dashed names still work, and `--config` takes the shipped configs by name."""

import ast
import os
import subprocess
import sys

import pytest

from dpiqa_jax.data import splits
from launch import cli, console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_DIR = os.path.join(REPO, "launch")
# Flags each launcher reads from a shared flag module: --help must list them too.
ADOPTED_FLAGS = {
    "train": ("--workdir", "--config", "--multihost", "--coordinator_address", "--process_id"),
    "evaluate": ("--checkpoint", "--output", "--batch_size", "--data_dir", "--image_size",
                 "--variant", "--resize_mode", "--value_range"),
    "run_splits": ("--config", "--dataset", "--data_dir", "--image_size", "--batch_size"),
    "cache_teacher_maps": ("--config", "--output", "--multihost"),
    "score": ("--checkpoint", "--output", "--batch_size", "--save_maps"),
    "convert": ("--checkpoint", "--output", "--prompts"),
    "export": ("--checkpoint", "--output", "--format", "--batch_size"),
    "make_splits": ("--dataset", "--variant", "--output"),
    "build_dataset": ("--dataset", "--variant", "--data_dir"),
}


def run_python(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, check=False)


def launcher_files() -> list[str]:
    """Modules of launch/ that run as programs (they have an `if __name__ == "__main__"`)."""
    names = []
    for file_name in sorted(os.listdir(LAUNCH_DIR)):
        if not file_name.endswith(".py") or file_name == "__main__.py":
            continue
        if _entry(file_name[:-3]) is not None:
            names.append(file_name[:-3])
    return names


def _entry(command: str) -> ast.If | None:
    """The module's top-level `if __name__ == "__main__":` block."""
    with open(os.path.join(LAUNCH_DIR, f"{command}.py"), encoding="utf-8") as source:
        tree = ast.parse(source.read())
    return next((node for node in tree.body if isinstance(node, ast.If)
                 and ast.unparse(node.test) == "__name__ == '__main__'"), None)


def test_the_console_lists_every_launcher():
    assert sorted(console.COMMANDS) == launcher_files()


@pytest.mark.parametrize("command", launcher_files())
def test_every_launcher_calls_the_shared_entry(command):
    assert [ast.unparse(statement) for statement in _entry(command).body] == ["cli.run(main)"]


@pytest.mark.parametrize("command", launcher_files())
def test_help_exits_0_and_lists_the_flags_read(command):
    result = run_python("-m", f"launch.{command}", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ADOPTED_FLAGS.get(command, ()):
        assert f"  {flag}:" in result.stdout, (command, flag)


def test_console_help_version_and_unknown_command(tmp_path):
    listing = run_python("-m", "launch", "--help")
    assert listing.returncode == 0
    for command in console.COMMANDS:
        line = next(line for line in listing.stdout.splitlines()
                    if line.split()[:1] == [command.replace("_", "-")])
        assert len(line.split()) > 2, line  # the command and its one-line summary
    version = run_python("-m", "launch", "--version")
    assert version.returncode == 0 and version.stdout.split()[-1] == console.dpiqa_jax.__version__
    unknown = run_python("-m", "launch", "scroe")
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1
    assert "unknown command 'scroe'" in unknown.stderr


def test_a_mistyped_flag_exits_2_with_one_line_naming_it():
    result = run_python("-m", "launch.score", "--checkpoint", "m", "--batch-sise", "2", "a.png")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m launch.score: Unknown command line flag 'batch_sise'. Did you mean: "
        "batch_size ? (see --help)"]


def test_a_config_typo_exits_2_with_the_suggestion_and_no_traceback(tmp_path):
    result = run_python("-m", "launch.train", "--config=configs/teacher.py:tiny",
                        "--config.optimizer.lerning_rate=1", f"--workdir={tmp_path}")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m launch.train: --config.optimizer.lerning_rate: ")
    assert 'Did you mean "learning_rate"' in lines[0]


def test_an_unknown_config_variant_is_one_line(tmp_path):
    result = run_python("-m", "launch", "train", "--config=teacher:tny", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "unknown config variant 'tny'" in result.stderr


def test_an_old_spelling_still_works_with_a_note(tmp_path):
    result = run_python("-m", "launch.export", "--checkpoint", str(tmp_path / "none"),
                        "--format", "official", "--out", str(tmp_path / "x.pth"))
    # Reaching the model check means --out was taken as the required --output.
    assert result.returncode == 2
    assert "note: --out is now --output" in result.stderr
    assert "cannot load --checkpoint" in result.stderr


def test_normalize_argv_underscores_names_only():
    cli._renamed.setdefault("old_name", "new_name")  # pylint: disable=protected-access
    argv = ["prog", "--batch-size=2", "--save-maps", "my-maps/", "--config.data.data_dir=a-b",
            "--old-name=1", "-h", "my-photo.png", "--", "--not-a-flag"]
    assert cli.normalize_argv(argv) == [
        "prog", "--batch_size=2", "--save_maps", "my-maps/", "--config.data.data_dir=a-b",
        "--new_name=1", "-h", "my-photo.png", "--", "--not-a-flag"]


@pytest.mark.parametrize("spelling", ["teacher:tiny", "configs/teacher.py:tiny"])
def test_named_and_path_configs_are_the_same(spelling, monkeypatch):
    monkeypatch.chdir(REPO)
    config = cli._ConfigParser(name="config").parse(spelling)  # pylint: disable=protected-access
    assert config.to_dict() == cli.config_module("teacher").get_config("tiny").to_dict()
    with pytest.raises(AttributeError):
        config.sed = 1  # locked


def test_a_missing_config_file_is_named():
    with pytest.raises(ValueError, match="nope.py: no such config file"):
        cli._ConfigParser(name="config").parse("nope.py:tiny")  # pylint: disable=protected-access


def test_own_folders_get_a_split_file_each():
    assert splits.split_file_path("splits", "iqa_folder", "random.json", "photos_a") != (
        splits.split_file_path("splits", "iqa_folder", "random.json", "photos_b"))
    assert str(splits.split_file_path("s", "iqa_folder", "random.json", "mine")) == (
        "s/iqa_folder/mine/random.json")
    assert str(splits.split_file_path("s", "spaq", "random.json")) == "s/spaq/random.json"
    with pytest.raises(ValueError, match="named by the folder's variant"):
        splits.split_file_path("s", "iqa_folder", "random.json")


def test_make_splits_wants_the_variant_of_an_own_folder(tmp_path):
    result = run_python("-m", "launch.make_splits", "--dataset=iqa_folder",
                        f"--data_dir={tmp_path}", f"--output={tmp_path / 'splits'}")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "needs --variant=NAME" in result.stderr
