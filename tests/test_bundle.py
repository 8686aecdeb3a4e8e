"""The bundle format: a save/load round trip is bit-exact, and loading is strict (manifest fields,
variables against the model, finite weights, safetensors checked by the library)."""

import dataclasses
import json
import struct

import ml_dtypes
import numpy as np
import pytest

from dpiqa_jax import bundle
from test_scorer import STUDENT_CONFIG, default_metadata, student_variables


@dataclasses.dataclass(frozen=True)
class _Inner:
    widths: tuple[int, ...]
    name: str


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner
    extra: _Inner | None
    scale: float = 1.0


@pytest.fixture(scope="module")
def variables():
    return student_variables()


def _save(directory, variables, **kwargs):
    kwargs.setdefault("metadata", default_metadata())
    return bundle.save_bundle(str(directory), "student", STUDENT_CONFIG, variables, **kwargs)


def _edit_manifest(directory, **fields):
    path = directory / "model.json"
    manifest = json.loads(path.read_text())
    for key, value in fields.items():
        if key.startswith("metadata."):
            manifest["metadata"][key.split(".", 1)[1]] = value
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def test_save_and_load_round_trip(tmp_path, variables):
    flat = bundle.flatten_variables(variables)
    # A bfloat16 leaf too: stored and read back in its own dtype.
    flat["params/fc1/bias"] = flat["params/fc1/bias"].astype(ml_dtypes.bfloat16)
    extras = {"features.1.0.block.0.1.num_batches_tracked": np.array(7, np.int64)}
    _save(tmp_path, bundle.unflatten_variables(flat), extras=extras,
          metadata=default_metadata(source="unit test"))
    loaded = bundle.load_bundle(str(tmp_path))
    assert loaded.kind == "student" and loaded.metadata == default_metadata(source="unit test")
    got = bundle.flatten_variables(loaded.variables)
    assert got.keys() == flat.keys()
    for key, value in flat.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    counter = loaded.extras["features.1.0.block.0.1.num_batches_tracked"]
    assert counter.shape == () and counter == 7
    assert bundle.load_bundle(str(tmp_path), extras=False).extras == {}  # scoring skips them


def test_teacher_without_prompts_is_refused(tmp_path, variables):
    with pytest.raises(ValueError, match="prompt embeddings"):
        bundle.save_bundle(str(tmp_path), "teacher", {}, variables)


def test_load_names_a_foreign_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.json"):
        bundle.load_bundle(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"format": "other", "kind": "teacher"}))
    with pytest.raises(bundle.BundleError, match="not a dpiqa_jax.bundle manifest"):
        bundle.load_bundle(str(tmp_path))


def test_missing_unexpected_and_misshaped_variables_are_named_in_one_error(tmp_path, variables):
    flat = dict(bundle.flatten_variables(variables))
    del flat["params/fc2/bias"]
    flat["params/stray/kernel"] = np.zeros((2, 2), np.float32)
    flat["params/fc3/kernel"] = np.zeros((3, 1), np.float32)
    _save(tmp_path, bundle.unflatten_variables(flat))
    with pytest.raises(bundle.BundleError) as caught:
        bundle.load_bundle(str(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/params.safetensors: the variables do not match")
    assert "1 missing: params/fc2/bias" in message
    assert "1 unexpected: params/stray/kernel [2, 2]" in message
    assert "1 mis-shaped: params/fc3/kernel: [3, 1], expected" in message


@pytest.mark.parametrize("field, value, message", [
    ("metadata", ["a"], "`metadata` must be a JSON object, got list"),
    ("metadata.score_range", [1], r"`metadata.score_range` must be two finite numbers .* \[1\]"),
    ("metadata.score_range", [100, 0], r"`metadata.score_range` .* low < high, got \[100, 0\]"),
    ("metadata.score_range", [0, "inf"], r"`metadata.score_range` must be two finite numbers"),
    ("metadata.image_size", "sixty-four", "`metadata.image_size` must be a positive integer"),
    ("metadata.image_size", 64.5, r"`metadata.image_size` must be a positive integer, got 64.5"),
    ("metadata.image_size", 0, r"`metadata.image_size` must be a positive integer, got 0$"),
    ("metadata.mos_scale", -1, r"`metadata.mos_scale` must be a positive number"),
    ("version", 2, r"unknown format version 2; this dpiqa_jax reads version 1"),
    ("kind", "critic", r"`kind` must be one of \('teacher', 'student'\), got 'critic'"),
    ("model_config", [1], r"`model_config` must be a JSON object, got list"),
])
def test_malformed_manifest_fields_are_refused_by_name(tmp_path, variables, field, value,
                                                       message):
    _save(tmp_path, variables)
    _edit_manifest(tmp_path, **{field: value})
    with pytest.raises(bundle.BundleError, match=f"^{tmp_path}/model.json: {message}"):
        bundle.load_bundle(str(tmp_path))


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, variables):
    flat = dict(bundle.flatten_variables(variables))
    flat["params/fc1/kernel"] = flat["params/fc1/kernel"].copy()
    flat["params/fc1/kernel"][0, :2] = [np.nan, np.inf]
    _save(tmp_path, bundle.unflatten_variables(flat))
    with pytest.raises(bundle.BundleError, match=r"tensor 'params/fc1/kernel' holds 2 non-finite"):
        bundle.load_bundle(str(tmp_path))


def _overlapping_safetensors(path):
    """Two tensors whose byte ranges overlap (and the first starting in the header's place)."""
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)


def test_a_safetensors_file_with_overlapping_tensors_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    _overlapping_safetensors(path)
    with pytest.raises(bundle.BundleError, match=f"^{path}: not a readable safetensors file"):
        bundle.read_safetensors(str(path))


def test_params_file_is_checked_as_strictly(tmp_path, variables):
    _save(tmp_path / "b", variables)
    model = bundle.load_bundle(str(tmp_path / "b"))
    path = str(tmp_path / "params.safetensors")
    model.variables["params"]["fc1"]["bias"] = np.zeros(3, np.float32)
    bundle.write_params_safetensors(model, path)
    with pytest.raises(bundle.BundleError, match="mis-shaped: params/fc1/bias: \\[3\\]"):
        bundle.load_params_safetensors(path)


def test_nested_config_dataclass_round_trips_through_json():
    config = _Outer(inner=_Inner((1, 2), "a"), extra=None, scale=0.5)
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    assert bundle.dataclass_from_dict(_Outer, data) == config
    with pytest.raises(ValueError, match="unknown config fields"):
        bundle.dataclass_from_dict(_Inner, {"widths": [1], "name": "a", "typo": 1})
