"""`python -m launch.convert`: the authors' checkpoints -> bundles, config from shapes, strictness.

Checkpoints are synthesized at tiny size in the authors' layout: the teacher's `vae.`, `unet.` and
`img_adapter.` parts are real diffusers modules' state dicts (random weights), the rest follows
their key names; the student comes from our converter's torch layout. The helpers are shared with
`test_export.py`.
"""

import json
import os

import numpy as np
import pytest
import torch

from dpiqa_jax import bundle, export
from dpiqa_jax.convert.dpiqa import official_teacher_shapes
from dpiqa_jax.convert.efficientnet import official_student_shapes
from dpiqa_jax.convert.torch_layout import StateDictMismatchError
from dpiqa_jax.models.student import StudentConfig
from dpiqa_jax.models.teacher import TeacherConfig

from helpers import (
    IMAGE_SIZE,
    NUM_PROMPTS,
    STUDENT_CONFIG,
    TEACHER_CONFIG,
    TEXT_DIM,
    official_student_state_dict,
    official_teacher_state_dict,
    run_module,
    save_torch,
    write_prompts,
    write_sd_configs,
)

# --------------------------------------------------------------------------- tiny checkpoints


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("official_teacher")
    return {"checkpoint": save_torch(official_teacher_state_dict(), directory / "teacher.pth"),
            "prompts": write_prompts(directory),
            "sd_config_dir": write_sd_configs(directory / "sd")}


# --------------------------------------------------------------------------- teacher


def test_teacher_config_comes_from_shapes_and_sd_configs(teacher_checkpoint):
    state = official_teacher_state_dict()
    config = export.teacher_config_from_state_dict(
        state, sd_config_dir=teacher_checkpoint["sd_config_dir"])
    assert config == TEACHER_CONFIG


def test_teacher_bundle_records_source_scale_prompts_and_layout(teacher_checkpoint, tmp_path):
    out = export.import_official_teacher(
        teacher_checkpoint["checkpoint"], teacher_checkpoint["prompts"], str(tmp_path / "b"),
        sd_config_dir=teacher_checkpoint["sd_config_dir"], image_size=IMAGE_SIZE)
    converted = bundle.load_bundle(out)
    meta = converted.metadata
    assert converted.kind == "teacher"
    assert meta["source"]["sha256"] == bundle.file_sha256(teacher_checkpoint["checkpoint"])
    assert meta["source"]["checkpoint"] == "teacher.pth"  # no machine-specific absolute path
    assert meta["mos_scale"] == 100.0 and meta["score_range"] == [0.0, 100.0]
    assert meta["image_size"] == IMAGE_SIZE
    assert meta["prompts"]["sidecar"]["prompt_count"] == NUM_PROMPTS
    assert list(meta["official_layout"]) == list(official_teacher_state_dict())
    np.testing.assert_array_equal(converted.prompts, np.load(teacher_checkpoint["prompts"]))
    unused = {k for k in official_teacher_state_dict() if k.startswith(
        ("vae.decoder.", "vae.post_quant_conv.", "QFD.bnc1.", "QFD.classifier_dist."))}
    assert set(converted.extras) == unused
    assert converted.extras["QFD.bnc1.num_batches_tracked"] == 1234


def test_an_sd15_sized_default_names_the_fix(teacher_checkpoint, tmp_path):
    with pytest.raises(StateDictMismatchError, match="--sd_config_from"):
        export.import_official_teacher(teacher_checkpoint["checkpoint"],
                                       teacher_checkpoint["prompts"], str(tmp_path / "b"))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("unet.conv_in.bias"), "missing from the state dict"),
    (lambda s: s.update({"unet.extra.weight": np.zeros(3, np.float32)}),
     r"unexpected in the state dict \(1\):\n  unet.extra.weight"),
    (lambda s: s.update({"unet.conv_in.bias": np.zeros(7, np.float32)}),
     r"(?s)shape mismatch.*unet.conv_in.bias: \(7,\)"),
    (lambda s: s.pop("QFD.fc1.weight"), "missing tensor 'QFD.fc1.weight'"),
])
def test_teacher_conversion_is_strict(teacher_checkpoint, tmp_path, edit, message):
    state = official_teacher_state_dict()
    edit(state)
    checkpoint = save_torch(state, tmp_path / "edited.pth")
    with pytest.raises(StateDictMismatchError, match=message):
        export.import_official_teacher(checkpoint, teacher_checkpoint["prompts"],
                                       str(tmp_path / "b"),
                                       sd_config_dir=teacher_checkpoint["sd_config_dir"])
    assert not os.path.exists(tmp_path / "b")


@pytest.mark.parametrize("count, dim, dtype", [(NUM_PROMPTS, TEXT_DIM + 1, np.float32),
                                               (NUM_PROMPTS, TEXT_DIM, np.float64)])
def test_prompts_must_be_float32_k_by_text_dim(teacher_checkpoint, tmp_path, count, dim, dtype):
    prompts = write_prompts(tmp_path, count, dim, dtype)
    with pytest.raises(ValueError, match=r"prompts.npy: prompt embeddings must be float32 \[K, 8"):
        export.import_official_teacher(teacher_checkpoint["checkpoint"], prompts,
                                       str(tmp_path / "b"),
                                       sd_config_dir=teacher_checkpoint["sd_config_dir"])


def test_prompt_sidecar_must_agree(teacher_checkpoint, tmp_path):
    prompts = write_prompts(tmp_path)
    with open(tmp_path / "prompts.json", "w", encoding="utf-8") as f:
        json.dump({"prompt_count": NUM_PROMPTS + 1}, f)
    with pytest.raises(ValueError, match="describes 4 prompts"):
        export.import_official_teacher(teacher_checkpoint["checkpoint"], prompts,
                                       str(tmp_path / "b"),
                                       sd_config_dir=teacher_checkpoint["sd_config_dir"])


def _shapes_only(manifest_shapes) -> dict[str, np.ndarray]:
    """Zero-stride stand-ins for a full-size checkpoint: right shapes, no memory."""
    return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in manifest_shapes.items()}


def test_the_authors_full_size_layouts_give_the_default_configs():
    teacher = _shapes_only(official_teacher_shapes())
    assert export.teacher_config_from_state_dict(teacher) == TeacherConfig()
    student = _shapes_only(official_student_shapes())
    assert export.infer_backbone(student) == "b7"
    assert export.student_config_from_state_dict(student) == StudentConfig()


# --------------------------------------------------------------------------- student


def test_student_backbone_and_head_come_from_shapes(tmp_path):
    state = official_student_state_dict()
    assert export.infer_backbone(state) == "b0"
    assert export.student_config_from_state_dict(state) == STUDENT_CONFIG
    out = export.import_official_student(save_torch(state, tmp_path / "s.pth"),
                                         str(tmp_path / "b"), image_size=IMAGE_SIZE)
    converted = bundle.load_bundle(out)
    assert converted.model_config["backbone"] == "b0"
    assert len(converted.extras) == sum(k.endswith("num_batches_tracked") for k in state)


def test_student_wrong_backbone_is_refused(tmp_path):
    checkpoint = save_torch(official_student_state_dict(), tmp_path / "s.pth")
    with pytest.raises(StateDictMismatchError, match="does not fit the model"):
        export.import_official_student(checkpoint, str(tmp_path / "b"), backbone="b1",
                                       image_size=IMAGE_SIZE)

# --------------------------------------------------------------------------- the command


def test_cli_converts_the_teacher_and_exports_it_back(teacher_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    converted = run_module("launch.convert", "official-teacher",
                           "--checkpoint", teacher_checkpoint["checkpoint"],
                           "--prompts", teacher_checkpoint["prompts"], "--out", str(out),
                           "--sd-config-from", teacher_checkpoint["sd_config_dir"],
                           "--image-size", str(IMAGE_SIZE))
    assert converted.returncode == 0, converted.stderr
    assert bundle.load_bundle(str(out)).kind == "teacher"
    exported = run_module("launch.export", "--checkpoint", str(out), "--format", "official",
                          "--out", str(tmp_path / "back.pth"))
    assert exported.returncode == 0, exported.stderr
    original = torch.load(teacher_checkpoint["checkpoint"], weights_only=True)
    back = torch.load(str(tmp_path / "back.pth"), weights_only=True)
    assert list(back) == list(original)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.parametrize("args, message", [
    (["official-kitten", "--checkpoint", "{ckpt}", "--out", "{out}"], "expected one command"),
    (["official-teacher", "--checkpoint", "{ckpt}", "--out", "{out}"], "needs --prompts"),
    (["official-student", "--checkpoint", "/nonexistent.pth", "--out", "{out}"], "no such file"),
    (["official-student", "--out", "{out}"], "--checkpoint"),
])
def test_cli_usage_errors_exit_2(teacher_checkpoint, tmp_path, args, message):
    args = [a.format(ckpt=teacher_checkpoint["checkpoint"], out=tmp_path / "b") for a in args]
    completed = run_module("launch.convert", *args)
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr


def test_cli_reports_a_checkpoint_that_does_not_convert(tmp_path):
    checkpoint = save_torch({"fc1.weight": np.zeros((2, 2), np.float32)}, tmp_path / "x.pth")
    completed = run_module("launch.convert", "official-student", "--checkpoint", checkpoint,
                           "--out", str(tmp_path / "b"))
    assert completed.returncode == 1
    assert "conversion failed" in completed.stderr and "x.pth" in completed.stderr
