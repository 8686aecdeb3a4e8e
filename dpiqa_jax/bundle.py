"""A finished model on disk: the "bundle" that scoring, evaluation and export read.

    DIR/model.json          kind (teacher | student), the model config, free-form metadata
    DIR/params.safetensors  the variables, flat names `params/unet/conv_in/kernel`, NHWC layouts
    DIR/prompts.npy         teacher only: the prompt embeddings [K, D] float32
    DIR/extras.safetensors  optional: tensors of an imported checkpoint our model does not use

Training checkpoints (Orbax) hold optimizer state and data position; a bundle holds only what a
user needs to score images, in files any safetensors reader can open.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from dpiqa_jax.convert import torch_layout

FORMAT = "dpiqa_jax.bundle"
VERSION = 1
KINDS = ("teacher", "student")
_NUMPY_TO_SAFETENSORS = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


@dataclasses.dataclass
class Bundle:
    kind: str
    model_config: dict[str, Any]
    variables: dict[str, Any]
    prompts: np.ndarray | None = None
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def build_model(self, **module_kwargs: Any):
        """The Flax module this bundle's variables belong to; `module_kwargs` (dtype, and for the
        teacher attention_kernel) go to its constructor."""
        config = model_config_from_dict(self.kind, self.model_config)
        if self.kind == "teacher":
            from dpiqa_jax.models.teacher import Teacher  # pylint: disable=import-outside-toplevel
            return Teacher(config=config, **module_kwargs)
        from dpiqa_jax.models.student import Student  # pylint: disable=import-outside-toplevel
        return Student(config=config, **module_kwargs)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes tensors in the safetensors format (any numpy dtype it names, bf16 included)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset, arrays = 0, []
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        array = np.ascontiguousarray(array).reshape(array.shape)  # keeps 0-d tensors 0-d
        code = _NUMPY_TO_SAFETENSORS.get(array.dtype)
        if code is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {array.dtype}, not storable")
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data start to 8 bytes
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays:
            f.write(array.tobytes())
    os.replace(tmp, path)


def flatten_variables(variables: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{'params': {'a': {'b': x}}} -> {'params/a/b': x} as numpy arrays."""
    flat = {}
    for name, value in variables.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_variables(value, key + "/"))
        else:
            flat[key] = np.asarray(value)
    return flat


def unflatten_variables(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def save_bundle(directory: str, kind: str, model_config: Any, variables: Mapping[str, Any], *,
                prompts: np.ndarray | None = None, extras: Mapping[str, np.ndarray] | None = None,
                metadata: Mapping[str, Any] | None = None) -> str:
    """Writes a bundle; `model_config` is the model's config dataclass or its dict form."""
    if kind not in KINDS:
        raise ValueError(f"bundle kind must be one of {KINDS}, got {kind!r}")
    if kind == "teacher" and prompts is None:
        raise ValueError("a teacher bundle needs its prompt embeddings")
    os.makedirs(directory, exist_ok=True)
    config_dict = (dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config)
                   else dict(model_config))
    write_safetensors(os.path.join(directory, "params.safetensors"),
                      flatten_variables(variables))
    if prompts is not None:
        np.save(os.path.join(directory, "prompts.npy"), np.asarray(prompts, np.float32))
    if extras:
        write_safetensors(os.path.join(directory, "extras.safetensors"), extras)
    manifest = {"format": FORMAT, "version": VERSION, "kind": kind, "model_config": config_dict,
                "metadata": dict(metadata or {})}
    with open(os.path.join(directory, "model.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=_json_default)
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, type) or hasattr(value, "dtype"):
        return str(np.dtype(value))
    raise TypeError(f"cannot store {type(value).__name__} in model.json")


def is_bundle(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "model.json"))


def load_bundle(directory: str) -> Bundle:
    """Reads a bundle written by `save_bundle`; errors name the directory and the problem."""
    manifest_path = os.path.join(directory, "model.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{directory} is not a dpiqa_jax model (no model.json)")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("kind") not in KINDS:
        raise ValueError(f"{manifest_path}: not a {FORMAT} manifest (format="
                         f"{manifest.get('format')!r}, kind={manifest.get('kind')!r})")
    variables = unflatten_variables(torch_layout.read_safetensors(
        os.path.join(directory, "params.safetensors")))
    prompts_path = os.path.join(directory, "prompts.npy")
    prompts = np.load(prompts_path) if os.path.isfile(prompts_path) else None
    if manifest["kind"] == "teacher" and prompts is None:
        raise FileNotFoundError(f"{directory}: a teacher bundle needs prompts.npy")
    extras_path = os.path.join(directory, "extras.safetensors")
    extras = torch_layout.read_safetensors(extras_path) if os.path.isfile(extras_path) else {}
    return Bundle(manifest["kind"], manifest["model_config"], variables, prompts, extras,
                  manifest.get("metadata", {}))


def dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuilds a (nested) frozen config dataclass from its `dataclasses.asdict` form."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config fields {sorted(unknown)}")
    return cls(**{name: _coerce(hints[name], value) for name, value in data.items()})


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, Mapping):
                return dataclass_from_dict(option, value)
        return _coerce(options[0], value) if len(options) == 1 else _tupled(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return dataclass_from_dict(hint, value)
    if origin is tuple or hint is tuple:
        return _tupled(value)
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def model_config_from_dict(kind: str, data: Mapping[str, Any]) -> Any:
    if kind == "teacher":
        from dpiqa_jax.models.teacher import TeacherConfig  # pylint: disable=import-outside-toplevel
        return dataclass_from_dict(TeacherConfig, data)
    if kind == "student":
        from dpiqa_jax.models.student import StudentConfig  # pylint: disable=import-outside-toplevel
        return dataclass_from_dict(StudentConfig, data)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
