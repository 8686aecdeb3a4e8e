"""`python -m launch.convert`: the authors' checkpoints -> bundles, config from shapes, strictness.

Checkpoints are synthesized at tiny size in the authors' layout: the teacher's `vae.`, `unet.` and
`img_adapter.` parts are real diffusers modules' state dicts (random weights), the rest follows
their key names; the student comes from our converter's torch layout. The helpers are shared with
`test_export.py`.
"""

import json
import os

import diffusers
import numpy as np
import pytest
import torch
from diffusers.models.adapter import FullAdapter

from dpiqa_jax import bundle, export
from dpiqa_jax.convert.dpiqa import official_teacher_shapes
from dpiqa_jax.convert.efficientnet import official_student_shapes, student_flax_to_official
from dpiqa_jax.convert.torch_layout import StateDictMismatchError
from dpiqa_jax.models.student import StudentConfig
from dpiqa_jax.models.teacher import TeacherConfig
from test_scorer import (IMAGE_SIZE, NUM_PROMPTS, STUDENT_CONFIG, TEACHER_CONFIG, TEXT_DIM,
                         TINY_CHANNELS, TINY_UNET, TINY_VAE, run_module, student_variables)

DISTORTION_CLASSES = 24


# --------------------------------------------------------------------------- tiny checkpoints


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _qfd_entries(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The authors' QFD keys in their module order, at TEACHER_CONFIG.qfd's widths."""
    qfd = TEACHER_CONFIG.qfd
    hidden, squeeze = qfd.hidden, qfd.hidden // qfd.se_reduction
    shapes: dict[str, tuple] = {}

    def squeeze_excite(name):
        shapes[f"{name}.fc.0.weight"] = (squeeze, hidden)
        shapes[f"{name}.fc.2.weight"] = (hidden, squeeze)

    for index, channels in enumerate(qfd.level_channels, start=1):
        shapes[f"conv{index}.weight"] = (hidden, channels, 3, 3)
        shapes[f"conv{index}.bias"] = (hidden,)
        squeeze_excite(f"se{index}")
    shapes["fuse_conv.weight"] = (hidden, hidden * len(qfd.level_channels), 3, 3)
    shapes["fuse_conv.bias"] = (hidden,)
    squeeze_excite("se_fuse")
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"bnc1.{leaf}"] = (hidden,)
    previous = hidden
    for index, channels in enumerate(qfd.score_channels, start=1):
        shapes[f"conv_score{index}.weight"] = (channels, previous, 1, 1)
        shapes[f"conv_score{index}.bias"] = (channels,)
        previous = channels
    flat = previous * qfd.map_size * qfd.map_size
    for name, (out, inp) in (("fc1", (qfd.head_hidden, flat)),
                             ("fc2", (qfd.head_hidden, qfd.head_hidden)),
                             ("fc3", (1, qfd.head_hidden)),
                             ("classifier_dist", (DISTORTION_CLASSES, qfd.head_hidden))):
        shapes[f"{name}.weight"] = (out, inp)
        shapes[f"{name}.bias"] = (out,)
    entries = {"QFD." + k: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)
               for k, s in shapes.items()}
    entries["QFD.bnc1.running_var"] = np.abs(entries["QFD.bnc1.running_var"]) + 0.5
    entries["QFD.bnc1.num_batches_tracked"] = np.array(1234, np.int64)
    keys = list(entries)  # the counter sits after running_var, as torch registers it
    keys.insert(keys.index("QFD.bnc1.running_var") + 1, keys.pop())
    return {k: entries[k] for k in keys}


def official_teacher_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny teacher checkpoint in the authors' layout and key order (VAE decoder included)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = diffusers.AutoencoderKL(**TINY_VAE)
    unet = diffusers.UNet2DConditionModel(**TINY_UNET)
    adapter = FullAdapter(channels=list(TINY_CHANNELS), num_res_blocks=1)
    state = {"gamma": rng.normal(0, 0.01, TEXT_DIM).astype(np.float32)}
    state.update(_prefixed("vae.", vae))
    state.update(_prefixed("unet.", unet))
    for name in ("fc.0", "fc.2"):
        state[f"text_adapter.{name}.weight"] = rng.normal(
            0, TEXT_DIM ** -0.5, (TEXT_DIM, TEXT_DIM)).astype(np.float32)
        state[f"text_adapter.{name}.bias"] = rng.normal(0, 0.01, TEXT_DIM).astype(np.float32)
    state.update(_prefixed("img_adapter.", adapter))
    state.update(_qfd_entries(rng))
    return state


def official_student_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny (B0, 8x8 map) student checkpoint in the authors' layout, BN counters set."""
    state = student_flax_to_official(student_variables(seed))
    for index, key in enumerate(k for k in state if k.endswith("num_batches_tracked")):
        state[key] = np.array(1000 + index, np.int64)
    return state


def save_torch(state_dict, path) -> str:
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, str(path))
    return str(path)


def write_sd_configs(directory) -> str:
    """A diffusers-style directory holding only the tiny unet/ and vae/ config.json."""
    for name, model in (("unet", diffusers.UNet2DConditionModel(**TINY_UNET)),
                        ("vae", diffusers.AutoencoderKL(**TINY_VAE))):
        model.save_config(os.path.join(str(directory), name))
    return str(directory)


def write_prompts(directory, count: int = NUM_PROMPTS, dim: int = TEXT_DIM,
                  dtype=np.float32) -> str:
    path = os.path.join(str(directory), "prompts.npy")
    np.save(path, np.random.default_rng(5).standard_normal((count, dim)).astype(dtype))
    with open(os.path.join(str(directory), "prompts.json"), "w", encoding="utf-8") as f:
        json.dump({"prompt_count": count, "mode": "clip_projected"}, f)
    return path


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
    assert meta["source"]["sha256"] == export.file_sha256(teacher_checkpoint["checkpoint"])
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
