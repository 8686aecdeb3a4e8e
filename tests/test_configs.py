"""The training configs: every variant builds, carries the authors' recipe, is locked against
mistyped keys, and takes `--config.key=value` overrides the way launch/train.py parses them."""

import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from configs import student as student_configs
from configs import teacher as teacher_configs
from dpiqa_jax.eval.multi_split import SplitRef
from dpiqa_jax.train import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_MODULES = {"teacher": teacher_configs, "student": student_configs}
REQUIRED_FIELDS = ("seed", "total_steps", "num_epochs", "checkpoint_every_steps",
                   "log_every_steps", "eval_every_steps", "eval_every_epochs", "protocol",
                   "batch_size", "mesh",
                   "init_checkpoint", "data.data_dir", "data.split_file")


def _get(config: ml_collections.ConfigDict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("kind", sorted(CONFIG_MODULES))
@pytest.mark.parametrize("variant", common.VARIANTS)
def test_every_variant_builds_with_the_shared_fields(kind, variant):
    config = CONFIG_MODULES[kind].get_config(variant)
    assert config.kind == kind and config.variant == variant
    for field in REQUIRED_FIELDS:
        _get(config, field)
    assert config.data.source == ("demo" if variant == "tiny" else "tfds")


@pytest.mark.parametrize("variant,milestone,batch", [("koniq10k", 5, 16), ("clive", 10, 16),
                                                     ("flive", 2, 16), ("spaq", 5, 16),
                                                     ("kadid10k", 5, 14)])
def test_teacher_recipe_is_the_authors(variant, milestone, batch):
    config = teacher_configs.get_config(variant)
    assert config.optimizer.name == "adam" and config.optimizer.learning_rate == 1e-5
    assert config.optimizer.weight_decay == 0.0
    assert config.batch_size == batch and config.num_epochs == 30
    assert tuple(config.schedule.milestone_epochs) == (milestone,)
    assert config.schedule.factor == 0.2
    assert config.model.latent == "mean" and config.model.timestep == 1


@pytest.mark.parametrize("variant,milestones", [("koniq10k", (5,)), ("clive", (10, 25)),
                                                ("flive", (4,)), ("spaq", (6,)),
                                                ("kadid10k", (5, 10))])
def test_student_recipe_is_the_authors(variant, milestones):
    config = student_configs.get_config(variant)
    assert config.optimizer.name == "adam" and config.optimizer.learning_rate == 1e-4
    assert config.batch_size == 24 and config.num_epochs == 30
    assert tuple(config.schedule.milestone_epochs) == milestones
    assert config.student.backbone == "b7"
    assert (config.loss.score_weight, config.loss.map_weight) == (1.0, 1.0)


def test_clive_reads_the_live_challenge_builder():
    assert teacher_configs.get_config("clive").data.dataset == "live_challenge"


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown config variant 'konig'"):
        teacher_configs.get_config("konig")


@pytest.mark.parametrize("kind", sorted(CONFIG_MODULES))
def test_docstring_gives_the_command(kind):
    doc = CONFIG_MODULES[kind].__doc__
    assert f"python -m launch.train --config=configs/{kind}.py:koniq10k" in doc
    assert f"--config=configs/{kind}.py:tiny" in doc
    assert f"dpiqa train --config {kind}:tiny" in doc


@pytest.mark.parametrize("kind", sorted(CONFIG_MODULES))
def test_a_config_file_loaded_from_its_path_builds_the_same_config(kind, monkeypatch):
    """ml_collections loads a config file outside any package; its import of `common` must work
    there as well as in the package (configs.teacher, dpiqa_jax.configs.teacher installed)."""
    monkeypatch.chdir(REPO)
    assert _parse([f"--config=configs/{kind}.py:tiny"]).to_dict() == (
        CONFIG_MODULES[kind].get_config("tiny").to_dict())


def _parse(argv):
    """Parses argv with a fresh flag set, as launch/train.py does (locked config)."""
    flag_values = flags.FlagValues()
    argv = ["prog"] + argv
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_overrides_reach_the_config(monkeypatch):
    monkeypatch.chdir(REPO)
    config = _parse(["--config=configs/teacher.py:koniq10k", "--config.seed=7",
                     "--config.optimizer.learning_rate=0.001", "--config.mesh=data=2,fsdp=4",
                     "--config.schedule.milestone_epochs=(3,9)", "--config.freeze_unet=True"])
    assert config.seed == 7 and config.optimizer.learning_rate == 0.001
    assert config.mesh == "data=2,fsdp=4" and tuple(config.schedule.milestone_epochs) == (3, 9)
    assert config.freeze_unet is True


def test_mistyped_override_is_rejected(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises((AttributeError, flags.Error), match="learnig_rate"):
        _parse(["--config=configs/teacher.py:koniq10k", "--config.optimizer.learnig_rate=0.1"])


def test_loaded_config_is_locked(monkeypatch):
    monkeypatch.chdir(REPO)
    config = _parse(["--config=configs/student.py:tiny"])
    with pytest.raises(AttributeError):
        config.sed = 1


def test_split_is_applied_to_a_locked_copy():
    config = teacher_configs.get_config("koniq10k")
    config.lock()
    split = SplitRef(dataset="spaq", split_file="splits/spaq/random.json", split="seed3")
    copy = run.config_for_split(config, split)
    assert (copy.data.dataset, copy.data.split_file, copy.data.split) == (
        "spaq", "splits/spaq/random.json", "seed3")
    assert config.data.dataset == "koniq10k"
    with pytest.raises(AttributeError):
        copy.data.splt = "x"


@pytest.mark.parametrize("kind", sorted(CONFIG_MODULES))
def test_evaluation_is_once_per_epoch_under_our_protocol_by_default(kind):
    config = CONFIG_MODULES[kind].get_config("clive")
    assert config.protocol == "ours"
    assert config.eval_every_epochs == 1 and config.eval_every_steps == 0
    assert run.eval_interval(config, 58) == 58
    config.eval_every_steps = 250
    assert run.eval_interval(config, 58) == 250
