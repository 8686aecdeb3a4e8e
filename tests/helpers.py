"""The test kit: tiny models, bundles and checkpoints, images, IQA dataset layouts, and the
environment of child processes. Every test file imports from here (fixtures: conftest.py); no
test file imports another.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import openpyxl
import scipy.io
import torch
import transformers
from diffusers.models.adapter import FullAdapter
from PIL import Image

from dpiqa_jax import bundle
from dpiqa_jax.convert import torch_layout
from dpiqa_jax.convert.efficientnet import student_flax_to_official
from dpiqa_jax.data import builders
from dpiqa_jax.dev import torch_models, train_parity
from dpiqa_jax.dev.torch_models import TorchTeacher
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.sd import clip_text
from dpiqa_jax.sd.unet import UNetConfig
from dpiqa_jax.sd.vae import VAEConfig
from dpiqa_jax.train import models as train_models

# --------------------------------------------------------------------------------- child processes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA's cheapest CPU code generation: these programs run three times, compiling dominates.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Compiled programs shared by the child processes of these tests (and by later test runs): the
# same tiny models compile once. Override the location with DPIQA_TEST_XLA_CACHE.
XLA_CACHE = os.environ.get("DPIQA_TEST_XLA_CACHE",
                           os.path.join(tempfile.gettempdir(), "dpiqa_jax_test_xla_cache"))


def child_environment(num_devices: int) -> dict[str, str]:
    """Environment of a child JAX process with `num_devices` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"{FAST_COMPILE_FLAGS} "
                        f"--xla_force_host_platform_device_count={num_devices}")
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = XLA_CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_module(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root (its PYTHONPATH first), text output."""
    paths = [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------- tiny scoring models and bundles


IMAGE_SIZE = 64
MAP_SIZE = 8
MOS_SCALE = bundle.MOS_SCALE
STUDENT_CONFIG = StudentConfig(backbone="b0", map_size=MAP_SIZE)
# The SD parts of the tiny training variant; the QFD head below is smaller.
TEXT_DIM = train_models.TINY_TEXT_DIM
NUM_PROMPTS = 3
TINY_CHANNELS = train_models.TINY_CHANNELS
TINY_UNET = train_models.TINY_UNET
TINY_VAE = train_models.TINY_VAE
TEACHER_CONFIG = TeacherConfig(
    unet=UNetConfig.from_diffusers(TINY_UNET), vae=VAEConfig.from_diffusers(TINY_VAE),
    image_adapter=ImageAdapterConfig(channels=TINY_CHANNELS, num_res_blocks=1),
    qfd=QFDConfig(level_channels=TINY_CHANNELS, hidden=16, se_reduction=4, score_channels=(8, 4),
                  map_size=MAP_SIZE, head_hidden=8),
    text_dim=TEXT_DIM)


def random_variables(abstract, seed: int):
    """Numpy variables for an abstract tree: He-scaled kernels, BatchNorm near identity.

    At this scale a deep random network still passes differences between images through, so
    distinct images get distinct scores.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name = path[-1].key
        shape = spec.shape
        if name == "mean":
            return np.zeros(shape, np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.0, shape).astype(np.float32)
        if name in ("scale", "gamma"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name in ("kernel", "embedding"):
            fan_in = int(np.prod(shape[:-1])) or 1
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def student_variables(seed: int = 0):
    abstract = jax.eval_shape(lambda: Student(STUDENT_CONFIG).init(
        jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), train=False))
    return random_variables(abstract, seed)


def teacher_variables_and_prompts(seed: int = 0):
    prompts = np.random.default_rng(seed + 100).standard_normal(
        (NUM_PROMPTS, TEXT_DIM)).astype(np.float32)
    abstract = jax.eval_shape(lambda: Teacher(TEACHER_CONFIG).init(
        jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), prompts))
    return random_variables(abstract, seed), prompts


def default_metadata(**overrides):
    return {"mos_scale": MOS_SCALE, "image_size": IMAGE_SIZE, **overrides}


def make_student_bundle(directory, metadata=None) -> str:
    return bundle.save_bundle(str(directory), "student", STUDENT_CONFIG, student_variables(),
                              metadata=default_metadata() if metadata is None else metadata)


def make_teacher_bundle(directory, metadata=None) -> str:
    variables, prompts = teacher_variables_and_prompts()
    return bundle.save_bundle(str(directory), "teacher", TEACHER_CONFIG, variables,
                              prompts=prompts,
                              metadata=default_metadata() if metadata is None else metadata)


def random_image(seed: int, size=(IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """uint8 [H, W, 3] with smooth structure plus noise (W, H = size)."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(xx[..., None] / (3 + seed) + yy[..., None] / 5 + np.arange(3))
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def save_image(path, array: np.ndarray, **kwargs) -> str:
    Image.fromarray(array).save(str(path), **kwargs)
    return str(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds one tiny IDAT: a decompression bomb's
    shape without its memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def bad_input_files(directory) -> dict[str, tuple[str, str]]:
    """name -> (path, regex the error must match) for every kind of bad file."""
    directory = str(directory)
    good = random_image(3)
    png = io.BytesIO()
    Image.fromarray(good).save(png, format="PNG")
    cases = {}

    def write(name, data: bytes):
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    cases["zero_byte"] = (write("empty.jpg", b""), "cannot decode")
    cases["truncated"] = (write("truncated.png", png.getvalue()[:200]), "cannot decode")
    cases["not_an_image"] = (write("notes.jpg", b"this is a text file\n" * 10), "cannot decode")
    cases["bomb"] = (write("bomb.png", png_header_only(100_000, 100_000)),
                     "exceeds (the )?limit")
    cases["tiny"] = (save_image(os.path.join(directory, "one_pixel.png"),
                                np.zeros((1, 1, 3), np.uint8)), "smaller than the minimum")
    os.makedirs(os.path.join(directory, "a_folder.jpg"))
    cases["directory"] = (os.path.join(directory, "a_folder.jpg"), "is a directory")
    cases["missing"] = (os.path.join(directory, "missing.jpg"), "no such file")
    return cases


# ---------------------------------------------------------------------------- authors' checkpoints


DISTORTION_CLASSES = 24


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


# -------------------------------------------------------- torch state dicts and the parity teacher


def to_numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def nchw_to_nhwc(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(x.detach().permute(0, 2, 3, 1).numpy())


def param_count(variables) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))


# The SD parts of the train-step parity check's tiny teacher.
PARITY_UNET = train_parity.TINY_UNET
PARITY_VAE = train_parity.TINY_VAE
PARITY_TEXT_DIM = PARITY_UNET["cross_attention_dim"]
PARITY_PROMPTS = 5
PARITY_CHANNELS = tuple(PARITY_UNET["block_out_channels"])
PARITY_TEACHER = TeacherConfig(
    unet=UNetConfig.from_diffusers(PARITY_UNET),
    vae=VAEConfig.from_diffusers(PARITY_VAE),
    image_adapter=ImageAdapterConfig(channels=PARITY_CHANNELS),
    qfd=QFDConfig(level_channels=PARITY_CHANNELS, hidden=32, se_reduction=16,
                  score_channels=(16, 8, 4), map_size=IMAGE_SIZE // 8, head_hidden=24),
    text_dim=PARITY_TEXT_DIM,
)


def build_torch_teacher(seed: int = 0) -> TorchTeacher:
    """The tiny torch teacher with every weight perturbed (no tensor trivial)."""
    return torch_models.build_torch_teacher(PARITY_UNET, PARITY_VAE, PARITY_TEACHER, seed=seed)


def official_state_dict(teacher: TorchTeacher) -> dict[str, np.ndarray]:
    """The state dict under the authors' `DPIQA` attribute names."""
    state = {"gamma": teacher.gamma.numpy().copy()}
    for prefix, module in [("vae.", teacher.vae), ("unet.", teacher.unet),
                           ("text_adapter.", teacher.text_adapter),
                           ("img_adapter.", teacher.img_adapter), ("QFD.", teacher.qfd)]:
        state.update({prefix + k: v for k, v in to_numpy_state_dict(module).items()})
    return state


def teacher_target(model: Teacher, batch: int = 2, image_size: int = IMAGE_SIZE):
    cfg = model.config
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    prompts = jax.ShapeDtypeStruct((PARITY_PROMPTS, cfg.text_dim), jnp.float32)
    return jax.eval_shape(model.init, {"params": jax.random.key(0), "latent": jax.random.key(1)},
                          images, prompts)


# -------------------------------------------------------------------------- tiny CLIP text encoder


LEGACY_EOS = 2
# Test-only merges: enough to build multi-character tokens, so BPE (not only bytes) is exercised.
TINY_MERGES = (("p", "h"), ("o", "t"), ("ph", "ot"), ("phot", "o</w>"), ("q", "u"), ("a", "l"),
               ("qu", "al"), ("i", "t"), ("qual", "it"), ("qualit", "y</w>"))


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: one printable character per byte value, in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = [], 0
    for byte in range(256):
        if byte in printable:
            codes.append(byte)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_clip_tokenizer(directory) -> dict[str, int]:
    """A valid minimal CLIP BPE vocabulary (all bytes, with and without `</w>`, a few merges),
    special tokens last so EOS is the largest id as in the real vocabulary. Returns the vocab."""
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TINY_MERGES))
    return vocab


def tiny_text_config(vocab_size: int, *, hidden_act: str = "quick_gelu",
                     eos_token_id: int = LEGACY_EOS) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
        layer_norm_eps=1e-5, projection_dim=24, bos_token_id=vocab_size - 2,
        eos_token_id=eos_token_id, pad_token_id=vocab_size - 1)


def tiny_reference(config: transformers.CLIPTextConfig, with_projection: bool, seed: int = 0):
    torch.manual_seed(seed)
    model_class = (transformers.CLIPTextModelWithProjection if with_projection
                   else transformers.CLIPTextModel)
    model = model_class(config).eval()
    # CLIP's init (std 0.02) keeps activations near 0, where gelu and quick_gelu agree and
    # attention is nearly uniform; wider weights make the test see those differences.
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model


def convert_reference(model) -> tuple[clip_text.CLIPTextEncoder, dict]:
    """Our encoder + its params from a transformers model's state_dict."""
    config = clip_text.CLIPTextConfig.from_transformers(model.config.to_dict())
    encoder = clip_text.CLIPTextEncoder(
        config, with_projection=isinstance(model, transformers.CLIPTextModelWithProjection))
    target = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    state = clip_text.with_text_model_prefix(
        {k: v.numpy() for k, v in model.state_dict().items()})
    variables = torch_layout.torch_to_flax(state, target, ignore=[r"position_ids"])
    return encoder, variables["params"]


# ----------------------------------------------------------------------------- IQA dataset layouts


@dataclasses.dataclass
class Layout:
    manual_dir: Path
    image_root: Path  # Image names are relative to it.
    expected: dict[str, tuple[float, dict[str, Any]]]  # name -> (mos, extra features)
    config_fields: dict[str, Any] = dataclasses.field(default_factory=dict)


def encoded_image(seed: int, size: tuple[int, int] = (20, 14), fmt: str = "JPEG") -> bytes:
    """A small image whose brightness grows with seed (so quality-like order is testable)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.integers(0, 40, size=(size[1], size[0], 3)) + 10 * seed, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")


def make_koniq10k(root: Path, count: int = 4, resolution: str = "1024x768") -> Layout:
    expected, rows = {}, []
    for i in range(count):
        name = f"{1000 + i}.jpg"
        _write(root / resolution / name, encoded_image(i))
        mos_1to5, zscore = 1.5 + i * 0.7, 12.5 + i * 20
        rows.append(f"{name},1,2,3,4,5,{100 + i},{mos_1to5},0.5,{zscore}")
        expected[name] = (zscore, {"mos_1to5": mos_1to5, "mos_std": 0.5, "num_ratings": 100 + i})
    write_csv(root / "koniq10k_scores_and_distributions.csv",
         "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore", rows)
    return Layout(root, root / resolution, expected, {"resolution": resolution})


def write_clive_mats(root: Path, test_names: list[str], mos: list[float], std: list[float]) -> None:
    """AllImages/AllMOS/AllStdDev_release.mat: the 7 training images first, as released."""
    training = list(builders.live_challenge.TRAINING_IMAGES)
    names = training + test_names
    cell = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        cell[i, 0] = np.array([name])
    (root / "Data").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat",
                     {"AllMOS_release": np.array([[50.0] * 7 + list(mos)])})
    scipy.io.savemat(root / "Data" / "AllStdDev_release.mat",
                     {"AllStdDev_release": np.array([[9.0] * 7 + list(std)])})


def make_live_challenge(root: Path, count: int = 3) -> Layout:
    names = [f"{100 + i}.bmp" if i % 2 == 0 else f"{100 + i}.JPG" for i in range(count)]
    mos = [20.0 + 25 * i for i in range(count)]
    std = [10.0 + i for i in range(count)]
    for i, name in enumerate(names):
        _write(root / "Images" / name, encoded_image(i, fmt="BMP" if name.endswith("bmp")
                                                     else "JPEG"))
    for training_name in builders.live_challenge.TRAINING_IMAGES:
        _write(root / "Images" / "trainingImages" / training_name, encoded_image(9, fmt="BMP"))
    write_clive_mats(root, names, mos, std)
    return Layout(root, root / "Images",
                  {n: (m, {"mos_std": s}) for n, m, s in zip(names, mos, std)})


def write_spaq_xlsx(path: Path, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet()
    sheet.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness",
                  "Sharpness"])
    for row in rows:
        sheet.append(list(row))
    workbook.save(path)


def make_spaq(root: Path, count: int = 3) -> Layout:
    expected, rows = {}, []
    for i in range(count):
        name = f"{i + 1:05d}.jpg"
        _write(root / "TestImage" / name, encoded_image(i))
        attributes = [10.0 + i, 20.0 + i, 30.0 + i, 40.0 + i, 50.0 + i]
        rows.append((name, 30.0 + 20 * i, *attributes))
        expected[name] = (30.0 + 20 * i, dict(zip(
            ("brightness", "colorfulness", "contrast", "noisiness", "sharpness"), attributes)))
    write_spaq_xlsx(root / "Annotations" / "MOS and Image attribute scores.xlsx", rows)
    return Layout(root, root / "TestImage", expected)


def make_flive(root: Path, count: int = 3) -> Layout:
    names = [f"voc_emotic_ava/AVA__{i}.jpg" if i % 2 == 0 else f"blur_dataset/motion{i:04d}.jpg"
             for i in range(count)]
    mos = [15.0 + 30 * i for i in range(count)]
    for i, name in enumerate(names):
        _write(root / name, encoded_image(i))
    write_csv(root / "labels_image.csv", "name,mos", [f"{n},{m}" for n, m in zip(names, mos)])
    return Layout(root, root, {n: (m, {}) for n, m in zip(names, mos)})


def make_kadid10k(root: Path, references: int = 2, levels: int = 2) -> Layout:
    expected, rows = {}, []
    for ref in range(1, references + 1):
        _write(root / "images" / f"I{ref:02d}.png", encoded_image(ref, fmt="PNG"))
        for distortion in (1, 10):
            for level in range(1, levels + 1):
                name = f"I{ref:02d}_{distortion:02d}_{level:02d}.png"
                _write(root / "images" / name, encoded_image(level, fmt="PNG"))
                mos = 5.0 - level * 0.8
                rows.append(f"{name},I{ref:02d}.png,{mos},0.25")
                expected[name] = (mos, {
                    "mos_variance": 0.25, "reference_name": f"I{ref:02d}.png",
                    "distortion_type": distortion, "distortion_level": level,
                    "distortion_name": builders.kadid10k.DISTORTION_NAMES[distortion - 1]})
    write_csv(root / "dmos.csv", "dist_img,ref_img,dmos,var", rows)
    return Layout(root, root / "images", expected)


def make_agiqa3k(root: Path, count: int = 3) -> Layout:
    expected, rows = {}, []
    for i in range(count):
        name = f"AttnGAN_normal_{i:03d}.jpg"
        _write(root / "images" / name, encoded_image(i))
        mos = 0.5 + i
        rows.append(f'{name},"a cat, anime style",,,anime style,{mos},0.3,{2.0 + i},0.4')
        expected[name] = (mos, {"mos_std": 0.3, "mos_align": 2.0 + i, "mos_align_std": 0.4,
                                "prompt": "a cat, anime style"})
    write_csv(root / "data.csv",
         "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align", rows)
    return Layout(root, root / "images", expected)


def make_iqa_folder(root: Path, count: int = 3) -> Layout:
    names = [f"photo_{i}.png" if i % 2 else f"sub/photo_{i}.jpg" for i in range(count)]
    for i, name in enumerate(names):
        _write(root / "images" / name, encoded_image(i, fmt="PNG" if name.endswith("png")
                                                     else "JPEG"))
    mos = [1.0 + 2 * i for i in range(count)]
    write_csv(root / "labels.csv", "filename,mos,comment",
              [f"{n},{m},x" for n, m in zip(names, mos)])
    return Layout(root, root / "images", {n: (m, {}) for n, m in zip(names, mos)},
                  {"mos_range": (1.0, 5.0)})


MAKERS: dict[str, Callable[[Path], Layout]] = {
    "koniq10k": make_koniq10k,
    "live_challenge": make_live_challenge,
    "spaq": make_spaq,
    "flive": make_flive,
    "kadid10k": make_kadid10k,
    "agiqa3k": make_agiqa3k,
    "iqa_folder": make_iqa_folder,
}


def mini_config(dataset: str, layout: Layout, name: str = "mini", **overrides):
    """A config for a miniature copy: its own name and the miniature's image count."""
    fields = {"name": name, "expected_count": len(layout.expected), **layout.config_fields,
              **overrides}
    if dataset == "iqa_folder":
        return builders.IqaFolderConfig(**fields)
    return dataclasses.replace(builders.resolve_config(dataset), **fields)


def build_mini(dataset: str, tmp_path: Path, **config_overrides):
    """Writes the miniature layout of `dataset` and builds it; returns (builder, layout)."""
    layout = MAKERS[dataset](tmp_path / "manual" / dataset)
    config = mini_config(dataset, layout, **config_overrides)
    builder = builders.build(dataset, tmp_path / "data", layout.manual_dir, config)
    return builder, layout
