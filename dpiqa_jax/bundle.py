"""A finished model on disk: the "bundle" that scoring, evaluation and export read.

    DIR/model.json          format, version, kind (teacher | student), the model config, metadata
    DIR/params.safetensors  the variables, flat names `params/unet/conv_in/kernel`, NHWC layouts
    DIR/prompts.npy         teacher only: the prompt embeddings [K, D] float32
    DIR/extras.safetensors  optional: tensors of an imported checkpoint our model does not use

The same model also travels as one params-only file (`write_params_safetensors`): the variables
under the same flat names, a teacher's prompts as the tensor `prompts`, and the manifest as JSON in
the safetensors metadata entry `dpiqa_jax`.

Loading is strict, whatever the form: the manifest's fields are checked by name; the variables must
be exactly the model's (missing, unexpected and mis-shaped tensors are listed in one
`BundleError`, before any weight is read); every weight and prompt must be finite. Safetensors
files are read and written by the `safetensors` library, which checks that offsets are in range,
ordered and non-overlapping and that shape x dtype matches each byte range.

Training checkpoints (Orbax) hold optimizer state and data position; a bundle holds only what a
user needs to score images, in files any safetensors reader can open.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from dpiqa_jax import prompts as prompts_lib
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig

FORMAT = "dpiqa_jax.bundle"
PARAMS_FORMAT = "dpiqa_jax.params"
VERSION = 1
KNOWN_VERSIONS = (1,)
KINDS = ("teacher", "student")
# The heads predict MOS / MOS_SCALE (the authors' target; our datasets' `mos_normalized`); a
# bundle's score is that x MOS_SCALE, on [0, MOS_SCALE].
MOS_SCALE = 100.0
# The bundle a training run writes into its workdir: the checkpoint selected on validation.
BEST_MODEL_DIR = "best_model"
MANIFEST_FILE = "model.json"
PARAMS_FILE = "params.safetensors"
PROMPTS_FILE = "prompts.npy"
EXTRAS_FILE = "extras.safetensors"
PARAMS_METADATA_KEY = "dpiqa_jax"
PROMPTS_TENSOR = "prompts"
DEFAULT_IMAGE_SIZE = 512
# Tensors are read in groups of about this many bytes, each group through its own memory map, so
# the file pages a load touches are released as it goes instead of doubling the weights in RAM.
READ_GROUP_BYTES = 1 << 28
_LIST_SHOWN = 20

Place = Callable[[np.ndarray], Any]


class BundleError(ValueError):
    """A model file or directory is not a valid bundle; the message names it and what is wrong."""


@dataclasses.dataclass
class Bundle:
    """A model in memory. `variables` leaves are numpy arrays, or what the loader's `place` made."""

    kind: str
    model_config: dict[str, Any]
    variables: dict[str, Any]
    prompts: np.ndarray | None = None
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """The model's input side in pixels (metadata `image_size`, else 512)."""
        return int(self.metadata.get("image_size", DEFAULT_IMAGE_SIZE))

    def build_model(self, **module_kwargs: Any):
        """The Flax module this bundle's variables belong to; `module_kwargs` (dtype, and for the
        teacher attention_kernel) go to its constructor."""
        return build_model(self.kind, model_config_from_dict(self.kind, self.model_config),
                           **module_kwargs)



def file_sha256(path: str) -> str:
    """The SHA-256 of a file, read in 16 MiB blocks (a bundle records its sources by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()

def build_model(kind: str, config: Any, **module_kwargs: Any):
    """The Flax module of `kind` for its config dataclass."""
    if kind == "teacher":
        return Teacher(config=config, **module_kwargs)
    return Student(config=config, **module_kwargs)


# --------------------------------------------------------------------------- safetensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes tensors in the safetensors format (any numpy dtype it names, bf16 included)."""
    # ascontiguousarray makes 0-d arrays 1-d; the reshape keeps them 0-d.
    arrays = {name: np.ascontiguousarray(value).reshape(np.shape(value))
              for name, value in tensors.items()}
    tmp = path + ".tmp"
    try:
        save_file(arrays, tmp, metadata=dict(metadata) if metadata else None)
    except Exception as err:  # safetensors raises its own types for dtypes it cannot store
        raise ValueError(f"{path}: cannot write safetensors ({type(err).__name__}: {err})") from err
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # the safetensors code: F32, BF16, I64, ...
    nbytes: int


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")


def _safe_open(path: str):
    try:
        return safe_open(path, framework="numpy")
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise BundleError(f"{path}: not a readable safetensors file ({err})") from err


def read_safetensors_header(path: str) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """(name -> TensorSpec, the `__metadata__` map) of a safetensors file; reads no weights."""
    with _safe_open(path) as f:
        metadata = dict(f.metadata() or {})
        specs = {}
        for name in f.keys():
            view = f.get_slice(name)
            shape, code = tuple(int(d) for d in view.get_shape()), view.get_dtype()
            specs[name] = TensorSpec(shape, code, math.prod(shape) * _DTYPE_BYTES.get(code, 1))
    return specs, metadata


def _groups(specs: Mapping[str, TensorSpec]) -> Iterator[list[str]]:
    group, size = [], 0
    for name, spec in specs.items():
        if group and size + spec.nbytes > READ_GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(name)
        size += spec.nbytes
    if group:
        yield group


def read_safetensors(path: str | os.PathLike, *, place: Place | None = None,
                     require_finite: bool = False,
                     host_names: Collection[str] = ()) -> dict[str, Any]:
    """Every tensor of a safetensors file, each passed through `place` (e.g. a device copy)
    except those in `host_names`, which stay numpy arrays.

    Tensors are read one at a time and handed to `place` at once, so with a `place` that copies
    elsewhere the host holds one tensor's bytes, not the whole file, at any moment.
    """
    path = os.fspath(path)
    specs, _ = read_safetensors_header(path)
    tensors = {}
    for group in _groups(specs):
        with _safe_open(path) as f:
            for name in group:
                try:
                    array = f.get_tensor(name)
                except Exception as err:  # truncated file, unsupported dtype
                    raise BundleError(f"{path}: cannot read tensor {name!r} ({err})") from err
                if require_finite:
                    check_finite(array, f"{path}: tensor {name!r}")
                tensors[name] = (array if place is None or name in host_names
                                 else place(array))
                del array
    return tensors


def check_finite(array: np.ndarray, label: str) -> None:
    """Refuses floating-point arrays holding NaN or infinity."""
    if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array.astype(np.float32)
                                                                if array.dtype.name == "bfloat16"
                                                                else array)))
        if bad:
            raise BundleError(f"{label} holds {bad} non-finite values (NaN or infinity)")


# --------------------------------------------------------------------------- variables trees


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """{'params': {'a': {'b': x}}} -> {'params/a/b': x} (leaves as they are, order kept)."""
    return traverse_util.flatten_dict(variables, sep="/")


def unflatten_variables(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_variables`."""
    return traverse_util.unflatten_dict(flat, sep="/")


def expected_variables(kind: str, config: Any, image_size: int) -> dict[str, TensorSpec]:
    """Flat name -> shape (and float-ness) of the variables the model initialises: what a bundle
    of this kind and config must hold, exactly. Shapes come from `jax.eval_shape`, no compute."""
    module = build_model(kind, config)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    if kind == "teacher":
        prompts = jnp.zeros((1, config.text_dim), jnp.float32)
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), images, prompts))
    else:
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), images, train=False))
    return {name: TensorSpec(tuple(leaf.shape),
                             "F32" if jnp.issubdtype(leaf.dtype, jnp.floating) else "I32", 0)
            for name, leaf in flatten_variables(abstract).items()}


def check_variables(found: Mapping[str, TensorSpec], expected: Mapping[str, TensorSpec],
                    source: str) -> None:
    """One `BundleError` listing every missing, unexpected and mis-shaped (or mis-typed) tensor."""
    missing = [f"{name} {list(spec.shape)}" for name, spec in expected.items()
               if name not in found]
    unexpected = [f"{name} {list(spec.shape)}" for name, spec in found.items()
                  if name not in expected]
    wrong = []
    for name in expected.keys() & found.keys():
        want, got = expected[name], found[name]
        if want.shape != got.shape:
            wrong.append(f"{name}: {list(got.shape)}, expected {list(want.shape)}")
        elif (want.dtype in _FLOAT_CODES) != (got.dtype in _FLOAT_CODES):
            wrong.append(f"{name}: dtype {got.dtype}, expected "
                         f"{'a float' if want.dtype in _FLOAT_CODES else 'an integer'} dtype")
    if missing or unexpected or wrong:
        sections = [(title, sorted(items)) for title, items in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong))
                    if items]
        details = "; ".join(f"{len(items)} {title}: " + ", ".join(items[:_LIST_SHOWN])
                            + (" ..." if len(items) > _LIST_SHOWN else "")
                            for title, items in sections)
        raise BundleError(f"{source}: the variables do not match the model ({details})")


# --------------------------------------------------------------------------- the manifest


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_metadata(metadata: Any, source: str) -> dict[str, Any]:
    """The metadata dict, its `score_range`, `image_size` and `mos_scale` checked by name."""
    if not isinstance(metadata, dict):
        raise BundleError(f"{source}: `metadata` must be a JSON object, got "
                          f"{type(metadata).__name__}")
    score_range = metadata.get("score_range")
    if score_range is not None:
        if (not isinstance(score_range, (list, tuple)) or len(score_range) != 2
                or not all(_is_number(v) and math.isfinite(v) for v in score_range)
                or not score_range[0] < score_range[1]):
            raise BundleError(f"{source}: `metadata.score_range` must be two finite numbers "
                              f"[low, high] with low < high, got {score_range!r}")
    image_size = metadata.get("image_size")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool)
                                   or image_size <= 0):
        raise BundleError(f"{source}: `metadata.image_size` must be a positive integer, got "
                          f"{image_size!r}")
    mos_scale = metadata.get("mos_scale")
    if mos_scale is not None and not (_is_number(mos_scale) and math.isfinite(mos_scale)
                                      and mos_scale > 0):
        raise BundleError(f"{source}: `metadata.mos_scale` must be a positive number, got "
                          f"{mos_scale!r}")
    return metadata


def validate_manifest(manifest: Any, source: str, expected_format: str) -> dict[str, Any]:
    """The manifest with its format, version, kind, model_config and metadata checked by name."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{source}: the manifest must be a JSON object, got "
                          f"{type(manifest).__name__}")
    if manifest.get("format") != expected_format:
        raise BundleError(f"{source}: not a {expected_format} manifest (format="
                          f"{manifest.get('format')!r})")
    version = manifest.get("version")
    if version not in KNOWN_VERSIONS or isinstance(version, bool):
        raise BundleError(f"{source}: unknown format version {version!r}; this dpiqa_jax reads "
                          f"version {', '.join(map(str, KNOWN_VERSIONS))}")
    if manifest.get("kind") not in KINDS:
        raise BundleError(f"{source}: `kind` must be one of {KINDS}, got {manifest.get('kind')!r}")
    if not isinstance(manifest.get("model_config"), dict):
        raise BundleError(f"{source}: `model_config` must be a JSON object, got "
                          f"{type(manifest.get('model_config')).__name__}")
    validate_metadata(manifest.get("metadata", {}), source)
    return manifest


def _read_manifest_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{path}: cannot read the manifest ({err})") from err


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, type) or hasattr(value, "dtype"):
        return str(np.dtype(value))
    raise TypeError(f"cannot store {type(value).__name__} in model.json")


def _manifest(fmt: str, kind: str, model_config: Any, metadata: Mapping[str, Any] | None
              ) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"bundle kind must be one of {KINDS}, got {kind!r}")
    config_dict = (dataclasses.asdict(model_config) if dataclasses.is_dataclass(model_config)
                   else dict(model_config))
    # A JSON round trip, so what is written is what a load will see (tuples become lists).
    return json.loads(json.dumps({"format": fmt, "version": VERSION, "kind": kind,
                                  "model_config": config_dict, "metadata": dict(metadata or {})},
                                 default=_json_default))


# --------------------------------------------------------------------------- writing


def save_bundle(directory: str, kind: str, model_config: Any, variables: Mapping[str, Any], *,
                prompts: np.ndarray | None = None, extras: Mapping[str, np.ndarray] | None = None,
                metadata: Mapping[str, Any] | None = None) -> str:
    """Writes a bundle; `model_config` is the model's config dataclass or its dict form."""
    manifest = _manifest(FORMAT, kind, model_config, metadata)
    if kind == "teacher" and prompts is None:
        raise ValueError("a teacher bundle needs its prompt embeddings")
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, PARAMS_FILE),
                      {k: np.asarray(v) for k, v in flatten_variables(variables).items()})
    if prompts is not None:
        np.save(os.path.join(directory, PROMPTS_FILE), np.asarray(prompts, np.float32))
    if extras:
        write_safetensors(os.path.join(directory, EXTRAS_FILE), extras)
    with open(os.path.join(directory, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return directory


def write_params_safetensors(model_bundle: Bundle, path: str) -> None:
    """Params-only safetensors: flat variable names, `prompts` for a teacher, manifest JSON."""
    tensors = {k: np.asarray(v) for k, v in flatten_variables(model_bundle.variables).items()}
    if model_bundle.prompts is not None:
        tensors[PROMPTS_TENSOR] = np.asarray(model_bundle.prompts, np.float32)
    manifest = _manifest(PARAMS_FORMAT, model_bundle.kind, model_bundle.model_config,
                         model_bundle.metadata)
    write_safetensors(path, tensors, {PARAMS_METADATA_KEY: json.dumps(manifest)})


# --------------------------------------------------------------------------- reading


def is_bundle(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST_FILE))


def _checked_prompts(prompts: np.ndarray, text_dim: int, source: str) -> np.ndarray:
    if prompts.dtype != np.float32 or prompts.ndim != 2 or prompts.shape[1] != text_dim \
            or prompts.shape[0] < 1:
        raise BundleError(f"{source}: prompt embeddings must be float32 [K, {text_dim}] with "
                          f"K >= 1, got {prompts.dtype} {list(prompts.shape)}")
    check_finite(prompts, source)
    return prompts


def _load_prompts_npy(path: str, text_dim: int) -> np.ndarray:
    try:
        prompts = prompts_lib.read_prompt_array(path, dim=text_dim)
    except ValueError as err:  # the message names the file
        raise BundleError(str(err)) from err
    except OSError as err:
        raise BundleError(f"{path}: cannot read the prompt embeddings ({err})") from err
    return _checked_prompts(prompts, text_dim, path)


def _config_or_error(kind: str, model_config: Mapping[str, Any], source: str) -> Any:
    try:
        return model_config_from_dict(kind, model_config)
    except (TypeError, ValueError) as err:
        raise BundleError(f"{source}: invalid model_config ({err})") from err


def _checked_variables(path: str, specs: Mapping[str, TensorSpec], kind: str, config: Any,
                       image_size: int, place: Place | None) -> dict[str, Any]:
    check_variables(specs, expected_variables(kind, config, image_size), path)
    flat = read_safetensors(path, place=place, require_finite=True)
    return unflatten_variables(flat)


def load_bundle(directory: str, *, place: Place | None = None, extras: bool = True) -> Bundle:
    """Reads and checks a bundle written by `save_bundle`.

    Args:
      directory: the bundle directory.
      place: applied to every variable as it is read (e.g. cast and copy to a device, so the host
        never holds all weights twice); default: numpy arrays.
      extras: also read extras.safetensors (only export needs it; scoring does not).

    Raises:
      FileNotFoundError: no model.json (not a bundle).
      BundleError: naming the file and every problem found (module docstring).
    """
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{directory} is not a dpiqa_jax model (no {MANIFEST_FILE})")
    manifest = validate_manifest(_read_manifest_file(manifest_path), manifest_path, FORMAT)
    kind, metadata = manifest["kind"], manifest.get("metadata", {})
    config = _config_or_error(kind, manifest["model_config"], manifest_path)
    params_path = os.path.join(directory, PARAMS_FILE)
    if not os.path.isfile(params_path):
        raise BundleError(f"{directory}: no {PARAMS_FILE}")
    specs, _ = read_safetensors_header(params_path)
    image_size = metadata.get("image_size", DEFAULT_IMAGE_SIZE)
    variables = _checked_variables(params_path, specs, kind, config, image_size, place)
    prompts_path = os.path.join(directory, PROMPTS_FILE)
    prompts = None
    if kind == "teacher":
        if not os.path.isfile(prompts_path):
            raise BundleError(f"{directory}: a teacher bundle needs {PROMPTS_FILE}")
        prompts = _load_prompts_npy(prompts_path, config.text_dim)
    extras_path = os.path.join(directory, EXTRAS_FILE)
    unused = read_safetensors(extras_path) if extras and os.path.isfile(extras_path) else {}
    return Bundle(kind, manifest["model_config"], variables, prompts, unused, metadata)


def load_params_safetensors(path: str, *, place: Place | None = None) -> Bundle:
    """Reads and checks a file written by `write_params_safetensors` (no extras)."""
    specs, file_metadata = read_safetensors_header(path)
    text = file_metadata.get(PARAMS_METADATA_KEY)
    if text is None:
        raise BundleError(f"{path}: a safetensors file without dpiqa_jax metadata; export models "
                          f"with `python -m launch.export --format safetensors`")
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise BundleError(f"{path}: the dpiqa_jax metadata is not JSON ({err})") from err
    manifest = validate_manifest(manifest, path, PARAMS_FORMAT)
    kind, metadata = manifest["kind"], manifest.get("metadata", {})
    config = _config_or_error(kind, manifest["model_config"], path)
    prompts_spec = specs.pop(PROMPTS_TENSOR, None)
    if kind == "teacher" and prompts_spec is None:
        raise BundleError(f"{path}: a teacher export needs the {PROMPTS_TENSOR!r} tensor")
    if kind == "student" and prompts_spec is not None:
        raise BundleError(f"{path}: a student export holds a {PROMPTS_TENSOR!r} tensor")
    check_variables(specs, expected_variables(kind, config,
                                              metadata.get("image_size", DEFAULT_IMAGE_SIZE)),
                    path)
    flat = read_safetensors(path, place=place, require_finite=True,
                            host_names=(PROMPTS_TENSOR,))
    prompts = flat.pop(PROMPTS_TENSOR, None)
    if prompts is not None:
        prompts = _checked_prompts(prompts, config.text_dim, path)
    return Bundle(kind, manifest["model_config"], unflatten_variables(flat), prompts, {}, metadata)


# --------------------------------------------------------------------------- config dataclasses


def dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuilds a (nested) frozen config dataclass from its `dataclasses.asdict` form."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
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
        return dataclass_from_dict(TeacherConfig, data)
    if kind == "student":
        return dataclass_from_dict(StudentConfig, data)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
