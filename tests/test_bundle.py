"""The bundle format: variables, prompts and extras survive a save/load bit-exactly."""

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest

from dpiqa_jax import bundle


@dataclasses.dataclass(frozen=True)
class _Inner:
    widths: tuple[int, ...]
    name: str


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner
    extra: _Inner | None
    scale: float = 1.0


def _variables():
    rng = np.random.default_rng(0)
    return {"params": {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
                                "bias": rng.standard_normal(4).astype(ml_dtypes.bfloat16)}},
            "batch_stats": {"bn": {"mean": np.arange(4, dtype=np.float32)}}}


def test_save_and_load_round_trip(tmp_path):
    prompts = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    extras = {"QFD.bnc1.running_var": np.ones(3, np.float32),
              "QFD.bnc1.num_batches_tracked": np.array(7, np.int64)}
    bundle.save_bundle(str(tmp_path), "teacher", {"width": 4}, _variables(), prompts=prompts,
                       extras=extras, metadata={"source": "unit test"})
    loaded = bundle.load_bundle(str(tmp_path))
    assert loaded.kind == "teacher" and loaded.model_config == {"width": 4}
    assert loaded.metadata == {"source": "unit test"}
    expected = bundle.flatten_variables(_variables())
    got = bundle.flatten_variables(loaded.variables)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.prompts, prompts)
    np.testing.assert_array_equal(loaded.extras["QFD.bnc1.running_var"], np.ones(3))
    counter = loaded.extras["QFD.bnc1.num_batches_tracked"]
    assert counter.shape == () and counter == 7


def test_teacher_without_prompts_is_refused(tmp_path):
    with pytest.raises(ValueError, match="prompt embeddings"):
        bundle.save_bundle(str(tmp_path), "teacher", {}, _variables())


def test_load_names_a_foreign_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.json"):
        bundle.load_bundle(str(tmp_path))
    (tmp_path / "model.json").write_text(json.dumps({"format": "other", "kind": "teacher"}))
    with pytest.raises(ValueError, match="not a dpiqa_jax.bundle manifest"):
        bundle.load_bundle(str(tmp_path))


def test_nested_config_dataclass_round_trips_through_json():
    config = _Outer(inner=_Inner((1, 2), "a"), extra=None, scale=0.5)
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    assert bundle.dataclass_from_dict(_Outer, data) == config
    with pytest.raises(ValueError, match="unknown config fields"):
        bundle.dataclass_from_dict(_Inner, {"widths": [1], "name": "a", "typo": 1})
