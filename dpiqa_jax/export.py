"""Moving finished models between our bundle (`dpiqa_jax.bundle`) and other formats.

In:
* `import_official_teacher` / `import_official_student`: the authors' PyTorch state dicts (torch
  pickle or safetensors) -> a bundle, strictly. The model config comes from the checkpoint's shapes
  where they determine it (adapter, QFD and head widths, map size, EfficientNet variant); the
  UNet/VAE hyper-parameters that shapes cannot tell (attention heads, norm groups) are SD 1.5's
  unless a diffusers directory with `unet/config.json` and `vae/config.json` is given.
  The bundle's metadata records the source file and its sha256, the MOS scale (the authors' head
  predicts MOS / 100), and the checkpoint's exact key -> shape layout (`official_layout`, in file
  order) so the export below reproduces the file's key set and order.

Out:
* `write_params_safetensors` (`dpiqa_jax.bundle`'s): params (and batch statistics) under flat
  names `params/unet/...`, the teacher's prompts as the tensor `prompts`, and the bundle manifest
  as JSON in the safetensors `__metadata__` entry `dpiqa_jax`; `Scorer.load` reads it back.
* `official_state_dict` / `export_official`: the authors' state-dict layout, as a torch `.pth`
  (torch needed, imported lazily; key order kept) or a `.safetensors` file (no torch; its header
  keeps no order). Round trip is bit-exact: tensors the model does not use were kept as extras at
  import and are written back.
* `export_jax_program`: a serialized `jax.export` program, params and prompts baked in as
  constants (the file alone is the model), input images [B, H, W, 3] float32 in [0, 1] with a
  polymorphic batch dimension `B` (or a fixed one), outputs (score [B] on the MOS scale,
  quality map [B, h, w, C] NHWC). Teacher latent: posterior mean. A JSON sidecar `PATH.json`
  describes input, outputs and scale. Reload with `jax.export.deserialize(bytes).call(images)`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import inference
from dpiqa_jax.convert import torch_layout
from dpiqa_jax.convert.dpiqa import (
    is_unused_teacher_key,
    official_teacher_shapes,
    teacher_flax_to_official,
    teacher_official_to_flax,
)
from dpiqa_jax.convert.efficientnet import student_flax_to_official, student_official_to_flax
from dpiqa_jax.convert.torch_layout import StateDictMismatchError
from dpiqa_jax.models import efficientnet
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.prompts import read_prompt_array
from dpiqa_jax.sd.unet import SD15_UNET_CONFIG, UNetConfig
from dpiqa_jax.sd.vae import SD15_VAE_CONFIG, VAEConfig

Array = np.ndarray

JAX_PROGRAM_FORMAT = "dpiqa_jax.jax_export"
# Serialized jax.export programs are flatbuffers, which cannot exceed 2 GiB.
MAX_BAKED_BYTES = 2**31 - 2**26
_BN_COUNTER = re.compile(r"(^|\.)num_batches_tracked$")


# --------------------------------------------------------------------------- small helpers


def _layout(state_dict: Mapping[str, Array]) -> dict[str, list[int]]:
    return {key: list(np.shape(value)) for key, value in state_dict.items()}


def _require(state_dict: Mapping[str, Array], key: str, ndim: int, source: str) -> tuple:
    if key not in state_dict:
        raise StateDictMismatchError(f"{source}: not a DP-IQA checkpoint of this kind: missing "
                                     f"tensor {key!r}")
    shape = tuple(np.shape(state_dict[key]))
    if len(shape) != ndim:
        raise StateDictMismatchError(f"{source}: tensor {key!r} has shape {shape}, expected "
                                     f"{ndim} dimensions")
    return shape


def _count_indices(state_dict: Mapping[str, Array], prefix: str) -> int:
    """How many consecutive `prefix{N}.` modules the state dict has (N = 0, 1, ...)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
    count = 0
    while count in indices:
        count += 1
    return count


def _abstract_variables(module: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))


def _source_metadata(kind: str, checkpoint: str) -> dict[str, Any]:
    # The file name and its digest identify the source; an absolute path would only name the
    # machine the bundle was made on.
    return {"format": kind, "checkpoint": os.path.basename(checkpoint),
            "sha256": bundle_lib.file_sha256(checkpoint)}


# --------------------------------------------------------------------------- authors' teacher in


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the JSON config ({err})") from err


def teacher_config_from_state_dict(state_dict: Mapping[str, Array], *,
                                   sd_config_dir: str | None = None,
                                   source: str = "teacher state dict") -> Any:
    """The `TeacherConfig` of an authors'-layout teacher state dict.

    Image adapter, QFD and text widths come from the tensors' shapes; UNet and VAE come from
    `sd_config_dir` (`unet/config.json`, `vae/config.json`, diffusers format) or SD 1.5.
    """
    if sd_config_dir is None:
        unet_dict, vae_dict = SD15_UNET_CONFIG, SD15_VAE_CONFIG
    else:
        unet_dict = _read_json(os.path.join(sd_config_dir, "unet", "config.json"))
        vae_dict = _read_json(os.path.join(sd_config_dir, "vae", "config.json"))
    unet = UNetConfig.from_diffusers(unet_dict)
    vae = VAEConfig.from_diffusers(vae_dict)

    stages = _count_indices(state_dict, "img_adapter.body.")
    channels = tuple(_require(state_dict, f"img_adapter.body.{i}.resnets.0.block1.weight", 4,
                              source)[0] for i in range(stages))
    adapter_in = _require(state_dict, "img_adapter.conv_in.weight", 4, source)[1]
    defaults = ImageAdapterConfig()
    factor = math.isqrt(adapter_in // defaults.in_channels)
    image_adapter = ImageAdapterConfig(
        in_channels=defaults.in_channels, channels=channels, downscale_factor=factor,
        num_res_blocks=_count_indices(state_dict, "img_adapter.body.0.resnets."))

    levels = _count_indices_named(state_dict, "QFD.conv", ".weight")
    score_layers = _count_indices_named(state_dict, "QFD.conv_score", ".weight")
    hidden = _require(state_dict, "QFD.conv1.weight", 4, source)[0]
    squeeze = _require(state_dict, "QFD.se1.fc.0.weight", 2, source)[0]
    score_channels = tuple(_require(state_dict, f"QFD.conv_score{i}.weight", 4, source)[0]
                           for i in range(1, score_layers + 1))
    head_hidden, flat = _require(state_dict, "QFD.fc1.weight", 2, source)
    map_size = math.isqrt(flat // score_channels[-1]) if score_channels else 0
    qfd = QFDConfig(level_channels=tuple(_require(state_dict, f"QFD.conv{i}.weight", 4, source)[1]
                                         for i in range(1, levels + 1)),
                    hidden=hidden, se_reduction=max(1, hidden // squeeze),
                    score_channels=score_channels, map_size=map_size, head_hidden=head_hidden)

    text_dim = _require(state_dict, "gamma", 1, source)[0]
    text_hidden = _require(state_dict, "text_adapter.fc.0.weight", 2, source)[0]
    try:
        return TeacherConfig(unet=unet, vae=vae, image_adapter=image_adapter, qfd=qfd,
                             text_dim=text_dim,
                             text_hidden_dim=None if text_hidden == text_dim else text_hidden)
    except ValueError as err:
        raise StateDictMismatchError(
            f"{source} does not fit the UNet/VAE config ({err}); if the checkpoint is not SD "
            f"1.5-sized, pass the diffusers directory of its configs (--sd_config_from)") from err


def _count_indices_named(state_dict: Mapping[str, Array], prefix: str, suffix: str) -> int:
    """How many of `{prefix}1{suffix}`, `{prefix}2{suffix}`, ... exist consecutively."""
    count = 0
    while f"{prefix}{count + 1}{suffix}" in state_dict:
        count += 1
    return count


def read_prompt_embeddings(path: str, text_dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Prompt embeddings float32 [K, text_dim] from a .npy, and what we know of their origin.

    The record holds the file, its sha256 and, when `prompts.json` sits beside it (written by
    `launch.embed_prompts`), that sidecar's contents.
    """
    embeddings = read_prompt_array(path, dim=text_dim)
    record: dict[str, Any] = {"path": os.path.basename(path),
                              "sha256": bundle_lib.file_sha256(path),
                              "shape": list(embeddings.shape)}
    sidecar = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(sidecar):
        record["sidecar"] = _read_json(sidecar)
        count = record["sidecar"].get("prompt_count")
        if count is not None and count != embeddings.shape[0]:
            raise ValueError(f"{sidecar} describes {count} prompts but {path} holds "
                             f"{embeddings.shape[0]}")
    return embeddings, record


def import_official_teacher(checkpoint: str, prompts_path: str, out_dir: str, *,
                            sd_config_dir: str | None = None, image_size: int = 512) -> str:
    """The authors' teacher checkpoint + prompt embeddings -> a teacher bundle in `out_dir`.

    Raises:
      StateDictMismatchError: naming missing, unexpected or mis-shaped tensors.
      ValueError / FileNotFoundError: unreadable files, wrong prompt embeddings.
    """
    state_dict = torch_layout.read_state_dict_file(checkpoint)
    config = teacher_config_from_state_dict(state_dict, sd_config_dir=sd_config_dir,
                                            source=checkpoint)
    prompts, prompts_record = read_prompt_embeddings(prompts_path, config.text_dim)
    target = _abstract_variables(Teacher(config), jnp.zeros((1, image_size, image_size, 3)),
                                 jnp.zeros((1, config.text_dim)))
    try:
        variables, extras = teacher_official_to_flax(state_dict, target, source=checkpoint)
    except StateDictMismatchError as err:
        hint = ("" if sd_config_dir else "\n(UNet/VAE sizes are SD 1.5's; for another size pass "
                "the diffusers directory of its configs with --sd_config_from)")
        raise StateDictMismatchError(f"{err}{hint}") from err
    metadata = {"source": _source_metadata("official-teacher", checkpoint),
                "prompts": prompts_record, "mos_scale": bundle_lib.MOS_SCALE,
                "score_range": [0.0, bundle_lib.MOS_SCALE], "image_size": image_size,
                "official_layout": _layout(state_dict)}
    return bundle_lib.save_bundle(out_dir, "teacher", config, variables, prompts=prompts,
                                  extras=extras, metadata=metadata)


# --------------------------------------------------------------------------- authors' student in


def _backbone_signature(state_dict: Mapping[str, Array], source: str) -> tuple:
    """(stem channels, blocks per stage, head channels, has SE) of a `base_model.features` dict."""
    stem = _require(state_dict, "base_model.features.0.0.weight", 4, source)[0]
    modules = _count_indices(state_dict, "base_model.features.")
    depths = tuple(_count_indices(state_dict, f"base_model.features.{s}.")
                   for s in range(1, modules - 1))
    head = _require(state_dict, f"base_model.features.{modules - 1}.0.weight", 4, source)[0]
    has_se = any(".block." in k and ".fc1." in k for k in state_dict)
    return stem, depths, head, has_se


def infer_backbone(state_dict: Mapping[str, Array], source: str = "student state dict") -> str:
    """The EfficientNet variant ("b0".."b7", "lite0".."lite2") whose layout the state dict has."""
    signature = _backbone_signature(state_dict, source)
    names = [f"b{i}" for i in range(8)] + [f"lite{i}" for i in range(3)]
    matches = []
    for name in names:
        config = efficientnet.efficientnet_config(name)
        candidate = (config.stem_channels, tuple(s.num_layers for s in config.stages),
                     config.head_channels, config.squeeze_excitation)
        if candidate == signature:
            matches.append(name)
    if len(matches) != 1:
        raise StateDictMismatchError(
            f"{source}: cannot tell the EfficientNet variant from the shapes (stem "
            f"{signature[0]}, blocks per stage {signature[1]}, head {signature[2]}, SE "
            f"{signature[3]}; matching: {matches or 'none'}); pass --backbone")
    return matches[0]


def student_config_from_state_dict(state_dict: Mapping[str, Array], backbone: str | None = None,
                                   source: str = "student state dict") -> Any:
    """The `StudentConfig` of an authors'-layout student state dict (backbone inferred if None)."""
    channels = _require(state_dict, "conv_transpose.weight", 4, source)[1]
    hidden, flat = _require(state_dict, "fc1.weight", 2, source)
    return StudentConfig(backbone=backbone or infer_backbone(state_dict, source),
                         map_size=math.isqrt(flat // channels), map_channels=channels,
                         hidden=hidden)


def import_official_student(checkpoint: str, out_dir: str, *, backbone: str | None = None,
                            image_size: int = 512) -> str:
    """The authors' student checkpoint -> a student bundle in `out_dir`.

    `num_batches_tracked` counters are not model variables; they are kept as extras so the export
    reproduces them.
    """
    state_dict = torch_layout.read_state_dict_file(checkpoint)
    config = student_config_from_state_dict(state_dict, backbone, checkpoint)
    target = _abstract_variables(Student(config), jnp.zeros((1, image_size, image_size, 3)),
                                 train=False)
    variables = student_official_to_flax(state_dict, target, source=checkpoint)
    extras = {k: np.asarray(v) for k, v in state_dict.items() if _BN_COUNTER.search(k)}
    metadata = {"source": _source_metadata("official-student", checkpoint),
                "mos_scale": bundle_lib.MOS_SCALE, "score_range": [0.0, bundle_lib.MOS_SCALE],
                "image_size": image_size, "official_layout": _layout(state_dict)}
    return bundle_lib.save_bundle(out_dir, "student", config, variables, extras=extras,
                                  metadata=metadata)


# --------------------------------------------------------------------------- authors' layout out


def _ordered_by_layout(state_dict: Mapping[str, Array], layout: Mapping[str, Sequence[int]],
                       optional: re.Pattern[str] | None = None) -> dict[str, Array]:
    """`state_dict` in `layout`'s key order, checking keys and shapes; keys matching `optional`
    may be absent from the layout (they are then dropped)."""
    missing = [k for k in layout if k not in state_dict]
    unexpected = [k for k in state_dict if k not in layout
                  and not (optional is not None and optional.search(k))]
    misshaped = [f"{k}: {tuple(np.shape(state_dict[k]))} -> expected {tuple(s)}"
                 for k, s in layout.items()
                 if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(s)]
    if missing or unexpected or misshaped:
        raise StateDictMismatchError(
            f"the model does not reproduce the recorded official layout: missing {missing[:20]}, "
            f"unexpected {unexpected[:20]}, mis-shaped {misshaped[:20]}")
    return {key: state_dict[key] for key in layout}


def official_state_dict(model_bundle: bundle_lib.Bundle, *,
                        omit_unused: bool = False) -> dict[str, Array]:
    """The bundle in the authors' state-dict layout (numpy), keys in their file order.

    A bundle imported from the authors' file reproduces that file's keys, order and values. A
    bundle of ours follows the authors' SD 1.5 teacher manifest or torch's student module order;
    our teacher has no VAE decoder / `bnc1` / `classifier_dist`, so it needs `omit_unused=True`
    (the file then loads in their code only with `strict=False`).
    """

    layout = model_bundle.metadata.get("official_layout")
    if model_bundle.kind == "student":
        state_dict = {**student_flax_to_official(model_bundle.variables),
                      **{k: np.asarray(v) for k, v in model_bundle.extras.items()}}
        return state_dict if layout is None else _ordered_by_layout(state_dict, layout, _BN_COUNTER)
    shapes = {k: tuple(s) for k, s in (layout or official_teacher_shapes()).items()}
    if omit_unused:
        shapes = {k: s for k, s in shapes.items()
                  if not is_unused_teacher_key(k) or k in model_bundle.extras}
    elif not model_bundle.extras and any(map(is_unused_teacher_key, shapes)):
        raise StateDictMismatchError(
            "this teacher bundle has no extras (the authors' unused VAE decoder, QFD.bnc1, "
            "QFD.classifier_dist); export with omit_unused=True (--omit_unused) and load the file "
            "with strict=False in the authors' code")
    return teacher_flax_to_official(model_bundle.variables, model_bundle.extras, shapes)


def _torch_tensor(array: Array):
    # torch is optional (the dev requirements): only writing a .pth needs it.
    import torch  # pylint: disable=import-outside-toplevel
    array = np.array(array)  # a writable, contiguous copy (bundle arrays are read-only memmaps)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def save_torch_state_dict(state_dict: Mapping[str, Array], path: str) -> None:
    """`torch.save` of the state dict as torch tensors, key order kept (needs torch)."""
    try:  # torch is optional (the dev requirements): only writing a .pth needs it.
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError("writing a .pth needs PyTorch (pip install torch), or write a "
                          ".safetensors file instead") from err
    tmp = path + ".tmp"
    torch.save({key: _torch_tensor(value) for key, value in state_dict.items()}, tmp)
    os.replace(tmp, path)


def export_official(model_bundle: bundle_lib.Bundle, path: str, *,
                    omit_unused: bool = False) -> None:
    """Writes `official_state_dict(...)` as .safetensors (by extension) or a torch pickle."""
    state_dict = official_state_dict(model_bundle, omit_unused=omit_unused)
    if path.endswith(".safetensors"):
        bundle_lib.write_safetensors(path, state_dict)
    else:
        save_torch_state_dict(state_dict, path)


# --------------------------------------------------------------------------- params safetensors

# The params-only file is a bundle format; `dpiqa_jax.bundle` owns it.
write_params_safetensors = bundle_lib.write_params_safetensors


# --------------------------------------------------------------------------- jax.export


def _nbytes(tree: Any) -> int:
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree))


def export_jax_program(model_bundle: bundle_lib.Bundle, path: str, *,
                       batch_size: int | None = None, dtype: Any = jnp.float32,
                       platforms: Sequence[str] | None = None,
                       mos_scale: float | None = None) -> dict[str, Any]:
    """Serializes the model as a `jax.export` program with its weights baked in.

    Args:
      model_bundle: the model.
      path: output file (the serialized program); `PATH.json` gets the description.
      batch_size: None for a polymorphic batch dimension, else a fixed batch size.
      dtype: compute dtype; the baked weights are stored in it (bfloat16 halves the file).
      platforms: lowering platforms (e.g. ("cpu", "cuda")); default the current backend.
      mos_scale: override of the bundle's `mos_scale`.

    Returns:
      The sidecar description written to `PATH.json`.
    """
    scale = inference.ScoreScale.from_metadata(model_bundle.metadata, mos_scale, path)
    variables = inference.cast_floats(model_bundle.variables, dtype)
    prompts = None if model_bundle.prompts is None else jnp.asarray(model_bundle.prompts, dtype)
    baked = _nbytes(variables) + (0 if prompts is None else prompts.nbytes)
    if baked > MAX_BAKED_BYTES:
        raise ValueError(f"the model's weights take {baked / 2**30:.2f} GiB in {np.dtype(dtype)}; "
                         f"a serialized jax.export program holds at most 2 GiB (try "
                         f"dtype=bfloat16, or export safetensors)")
    # Chunked attention compares the token count with the chunk size; with a polymorphic batch
    # that count is symbolic (cross-attention folds the batch into the token axis), so such a
    # program attends unchunked.
    module = inference.build_module(
        model_bundle, dtype=dtype,
        query_chunk=inference.INFERENCE_QUERY_CHUNK if batch_size else 0)

    def serve(images):
        raw, quality_map = inference.apply_model(module, variables, prompts, images, {})
        return (raw.astype(jnp.float32) * jnp.float32(scale.mos_scale),
                quality_map.astype(jnp.float32))

    side = model_bundle.image_size
    batch = jax.export.symbolic_shape("b")[0] if batch_size is None else batch_size
    spec = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)
    exported = jax.export.export(jax.jit(serve), platforms=platforms)(spec)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(exported.serialize())
    os.replace(tmp, path)
    description = {
        "format": JAX_PROGRAM_FORMAT, "kind": model_bundle.kind,
        "input": {"shape": ["B" if batch_size is None else batch_size, side, side, 3],
                  "dtype": "float32", "range": [0.0, 1.0], "layout": "NHWC RGB"},
        "outputs": [{"name": "score", "shape": ["B"], "dtype": "float32"},
                    {"name": "quality_map", "shape": ["B"] + list(exported.out_avals[1].shape[1:]),
                     "dtype": "float32", "layout": "NHWC"}],
        "mos_scale": scale.mos_scale, "score_range": list(scale.score_range),
        "lower_better": False, "compute_dtype": str(np.dtype(dtype)),
        "platforms": list(exported.platforms), "latent": "mean" if model_bundle.kind == "teacher"
        else None, "model_metadata": {k: v for k, v in model_bundle.metadata.items()
                                      if k != "official_layout"},
    }
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(description, f, indent=2)
    return description
