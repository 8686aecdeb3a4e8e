"""Export formats: params safetensors, the authors' state-dict layout, serialized jax.export.

Every format is read back: safetensors by `Scorer.load`, the official layout by torch and by our
converter (bit-exact against the synthesized source checkpoint), jax.export programs by
`jax.export.deserialize` in a process that never imports our model code.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch

from dpiqa_jax import bundle, export, scorer
from dpiqa_jax.convert.torch_layout import StateDictMismatchError, read_safetensors
from test_convert_cli import (official_student_state_dict, official_teacher_state_dict,
                              save_torch, write_prompts, write_sd_configs)
from test_scorer import (IMAGE_SIZE, MAP_SIZE, make_student_bundle,
                         make_teacher_bundle, random_image, run_module)

# The exported program bakes the weights in as constants; XLA may fold them differently from the
# scorer's program, so outputs agree to float32 rounding.
EXPORT_RTOL = 1e-5
EXPORT_ATOL = 1e-5


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return make_student_bundle(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher_bundle(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def converted_teacher(tmp_path_factory):
    """(source state dict, bundle dir) of an authors'-layout tiny teacher converted by us."""
    directory = tmp_path_factory.mktemp("converted_teacher")
    state = official_teacher_state_dict(seed=1)
    out = export.import_official_teacher(
        save_torch(state, directory / "t.pth"), write_prompts(directory), str(directory / "b"),
        sd_config_dir=write_sd_configs(directory / "sd"), image_size=IMAGE_SIZE)
    return state, out


@pytest.fixture(scope="module")
def converted_student(tmp_path_factory):
    directory = tmp_path_factory.mktemp("converted_student")
    state = official_student_state_dict(seed=1)
    out = export.import_official_student(save_torch(state, directory / "s.pth"),
                                         str(directory / "b"), image_size=IMAGE_SIZE)
    return state, out


def assert_same_state_dict(got, expected, ordered=True):
    """Same keys (in the same order if `ordered`), dtypes and values, bit for bit."""
    assert (list(got) == list(expected)) if ordered else (sorted(got) == sorted(expected))
    for key, value in expected.items():
        assert np.asarray(got[key]).dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def images(count=3):
    return [random_image(i) for i in range(count)]


# --------------------------------------------------------------------------- params safetensors


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_params_safetensors_round_trip(kind, student_dir, teacher_dir, tmp_path):
    directory = student_dir if kind == "student" else teacher_dir
    path = str(tmp_path / "model.safetensors")
    original = bundle.load_bundle(directory)
    export.write_params_safetensors(original, path)
    loaded = bundle.load_params_safetensors(path)
    assert loaded.kind == kind and loaded.model_config == original.model_config
    assert loaded.metadata == original.metadata
    flat, expected = (bundle.flatten_variables(b.variables) for b in (loaded, original))
    assert flat.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(flat[key], expected[key], err_msg=key)
    if kind == "teacher":
        np.testing.assert_array_equal(loaded.prompts, original.prompts)
    assert "prompts" in read_safetensors(path) or kind == "student"
    from_file = scorer.Scorer.load(path, batch_size=2)
    from_bundle = scorer.Scorer.load(directory, batch_size=2)
    np.testing.assert_array_equal(from_file.score(images()), from_bundle.score(images()))


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    path = str(tmp_path / "other.safetensors")
    bundle.write_safetensors(path, {"w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="without dpiqa_jax metadata"):
        scorer.Scorer.load(path)


# --------------------------------------------------------------------------- authors' layout


def test_official_teacher_round_trip_is_bit_exact(converted_teacher, tmp_path):
    source, directory = converted_teacher
    path = str(tmp_path / "back.pth")
    export.export_official(bundle.load_bundle(directory), path)
    back = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    assert_same_state_dict(back, source)


def test_official_student_round_trip_is_bit_exact(converted_student, tmp_path):
    source, directory = converted_student
    path = str(tmp_path / "back.safetensors")  # the same layout, written without torch
    export.export_official(bundle.load_bundle(directory), path)
    assert_same_state_dict(read_safetensors(path), source, ordered=False)  # a header has no order
    export.export_official(bundle.load_bundle(directory), str(tmp_path / "back.pth"))
    back = {k: v.numpy() for k, v in torch.load(tmp_path / "back.pth", weights_only=True).items()}
    assert_same_state_dict(back, source)


def test_our_student_exports_in_torch_module_order_and_converts_back(student_dir, tmp_path):
    ours = bundle.load_bundle(student_dir)
    path = str(tmp_path / "ours.pth")
    export.export_official(ours, path)
    back = export.import_official_student(path, str(tmp_path / "b"), image_size=IMAGE_SIZE)
    again = bundle.flatten_variables(bundle.load_bundle(back).variables)
    for key, value in bundle.flatten_variables(ours.variables).items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_teacher_without_extras_needs_omit_unused(converted_teacher, tmp_path):
    source, directory = converted_teacher
    path = str(tmp_path / "t.safetensors")
    export.write_params_safetensors(bundle.load_bundle(directory), path)
    params_only = bundle.load_params_safetensors(path)  # layout recorded, extras gone
    with pytest.raises(StateDictMismatchError, match="omit_unused"):
        export.official_state_dict(params_only)
    state = export.official_state_dict(params_only, omit_unused=True)
    unused = ("vae.decoder.", "vae.post_quant_conv.", "QFD.bnc1.", "QFD.classifier_dist.")
    assert list(state) == [k for k in source if not k.startswith(unused)]
    for key in state:
        np.testing.assert_array_equal(state[key], source[key], err_msg=key)


def test_our_tiny_teacher_has_no_official_layout_to_follow(teacher_dir):
    with pytest.raises(StateDictMismatchError):
        export.official_state_dict(bundle.load_bundle(teacher_dir), omit_unused=True)


# --------------------------------------------------------------------------- jax.export

_RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
    batch = np.load(sys.argv[2])
    outputs = {}
    for size in (len(batch), 1):  # two batch sizes through the one polymorphic program
        score, quality_map = exported.call(batch[:size])
        outputs[size] = (np.asarray(score).tolist(), list(quality_map.shape))
    assert not any(name.startswith("dpiqa_jax") for name in sys.modules), "model code imported"
    print(json.dumps(outputs))
""")


def test_student_jax_export_reloads_without_our_code(student_dir, tmp_path):
    model_bundle = bundle.load_bundle(student_dir)
    path = str(tmp_path / "student.jaxexport")
    description = export.export_jax_program(model_bundle, path)
    assert description["input"]["shape"] == ["B", IMAGE_SIZE, IMAGE_SIZE, 3]
    with open(path + ".json", encoding="utf-8") as f:
        assert json.load(f) == description
    model = scorer.Scorer.load(student_dir, batch_size=2)
    batch = np.stack([model.prepare(image) for image in images()])
    np.save(tmp_path / "batch.npy", batch)
    (tmp_path / "reload.py").write_text(_RELOAD_SCRIPT)
    completed = run_standalone_script(tmp_path / "reload.py", path, tmp_path / "batch.npy")
    outputs = json.loads(completed.stdout)
    expected = model.score(images())
    np.testing.assert_allclose(outputs["3"][0], expected, rtol=EXPORT_RTOL, atol=EXPORT_ATOL)
    np.testing.assert_allclose(outputs["1"][0], expected[:1], rtol=EXPORT_RTOL, atol=EXPORT_ATOL)
    assert outputs["3"][1] == [3, MAP_SIZE, MAP_SIZE, 8]


def run_standalone_script(script, *args):
    """Runs a script with no path to this repository (PYTHONPATH dropped, cwd elsewhere)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, str(script), *map(str, args)],
                               cwd=os.path.dirname(str(script)), env=env, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed


def test_fixed_batch_jax_export_refuses_other_sizes(student_dir, tmp_path):
    path = str(tmp_path / "fixed.jaxexport")
    export.export_jax_program(bundle.load_bundle(student_dir), path, batch_size=2)
    with open(path, "rb") as f:
        exported = jax.export.deserialize(f.read())
    assert exported.in_avals[0].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    with pytest.raises(ValueError):
        exported.call(np.zeros((3, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))


def test_teacher_jax_export_matches_the_scorer(teacher_dir, tmp_path):
    path = str(tmp_path / "teacher.jaxexport")
    export.export_jax_program(bundle.load_bundle(teacher_dir), path)
    with open(path, "rb") as f:
        exported = jax.export.deserialize(f.read())
    model = scorer.Scorer.load(teacher_dir, batch_size=2)
    batch = np.stack([model.prepare(image) for image in images(2)])
    score, quality_map = exported.call(batch)
    expected = model.predict(images(2), return_maps=True)
    # The teacher's random activations reach ~1e2: relative float32 rounding, a bit looser. The
    # program runs both images as one batch, the scorer one image at a time: other reduction
    # orders, which the random tiny teacher amplifies; measured on a 2-core x86 CPU: max
    # |difference| 1.4e-3 on map values up to ~8 (one element of 512), hence 5e-3.
    np.testing.assert_allclose(score, expected.score, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(quality_map, expected.quality_map, rtol=1e-4, atol=5e-3)


def test_jax_export_refuses_programs_over_the_size_limit(student_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_BAKED_BYTES", 1000)
    with pytest.raises(ValueError, match="at most 2 GiB"):
        export.export_jax_program(bundle.load_bundle(student_dir), str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


# --------------------------------------------------------------------------- the command


def test_cli_exports_each_format(student_dir, tmp_path):
    for fmt, name in (("safetensors", "s.safetensors"), ("official", "s.pth"),
                      ("jax-export", "s.jaxexport")):
        completed = run_module("launch.export", "--checkpoint", student_dir, "--format", fmt,
                               "--out", str(tmp_path / name))
        assert completed.returncode == 0, completed.stderr
        assert os.path.getsize(tmp_path / name) > 0
    assert os.path.isfile(tmp_path / "s.jaxexport.json")


@pytest.mark.parametrize("args, code, message", [
    (["--format", "tflite"], 2, "flag --format=tflite"),
    (["--checkpoint", "/nonexistent", "--format", "official"], 2, "cannot load --checkpoint"),
    (["--format", "official", "stray"], 2, "unexpected arguments"),
])
def test_cli_errors(student_dir, tmp_path, args, code, message):
    if "--checkpoint" not in args:
        args = ["--checkpoint", student_dir, *args]
    completed = run_module("launch.export", *args, "--out", str(tmp_path / "x"))
    assert completed.returncode == code, completed.stderr
    assert message in completed.stderr


def test_cli_reports_an_unexportable_model(teacher_dir, tmp_path):
    completed = run_module("launch.export", "--checkpoint", teacher_dir, "--format", "official",
                           "--out", str(tmp_path / "t.pth"))
    assert completed.returncode == 1 and "export failed" in completed.stderr
