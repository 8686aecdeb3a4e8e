"""The scoring API: input kinds, bad inputs, padding, determinism, score scale, model resolution.

Tiny random models (a B0 student, a 4-level teacher with 8-16 channels) on 64x64 inputs. The
`make_*_bundle` helpers are shared with the CLI and export tests.
"""

import dataclasses
import io
import os
import re
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dpiqa_jax import bundle, inference, scorer
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.sd.unet import UNetConfig
from dpiqa_jax.sd.vae import VAEConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 64
MAP_SIZE = 8
MOS_SCALE = 100.0
STUDENT_CONFIG = StudentConfig(backbone="b0", map_size=MAP_SIZE)

TEXT_DIM = 8
NUM_PROMPTS = 3
TINY_CHANNELS = (8, 16, 16, 16)
TINY_UNET = {
    "in_channels": 4, "out_channels": 4, "block_out_channels": list(TINY_CHANNELS),
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "layers_per_block": 1, "attention_head_dim": 2, "cross_attention_dim": TEXT_DIM,
    "norm_num_groups": 4,
}
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8, 8, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 0.18215,
}
TEACHER_CONFIG = TeacherConfig(
    unet=UNetConfig.from_diffusers(TINY_UNET), vae=VAEConfig.from_diffusers(TINY_VAE),
    image_adapter=ImageAdapterConfig(channels=TINY_CHANNELS, num_res_blocks=1),
    qfd=QFDConfig(level_channels=TINY_CHANNELS, hidden=16, se_reduction=4, score_channels=(8, 4),
                  map_size=MAP_SIZE, head_hidden=8),
    text_dim=TEXT_DIM)

# Same compiled program, rows computed independently: padding must not change a score beyond
# float32 rounding.
PADDING_RTOL = 1e-6
PADDING_ATOL = 1e-6


# --------------------------------------------------------------------------- shared helpers


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


def run_module(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root (its PYTHONPATH first), text output."""
    paths = [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return make_student_bundle(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def student(student_dir):
    return scorer.Scorer.load(student_dir, batch_size=2)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher_bundle(tmp_path_factory.mktemp("teacher"))


# --------------------------------------------------------------------------- student: the API


def test_batch_of_three_with_batch_size_two_matches_one_by_one(student):
    images = [random_image(i) for i in range(3)]
    together = student.predict(images, return_maps=True)
    alone = [student.predict(image, return_maps=True) for image in images]
    np.testing.assert_allclose(together.raw, np.concatenate([p.raw for p in alone]),
                               rtol=PADDING_RTOL, atol=PADDING_ATOL)
    np.testing.assert_allclose(together.quality_map,
                               np.concatenate([p.quality_map for p in alone]),
                               rtol=PADDING_RTOL, atol=PADDING_ATOL)
    assert together.quality_map.shape == (3, MAP_SIZE, MAP_SIZE, 8)
    assert np.ptp(together.raw) > 1e-3  # distinct images get distinct scores


def test_same_image_same_score_in_a_fresh_scorer(student, student_dir):
    images = [random_image(i) for i in range(3)]
    again = scorer.Scorer.load(student_dir, batch_size=2)
    np.testing.assert_array_equal(student.score(images), again.score(images))
    np.testing.assert_array_equal(student.score(images), student.score(images))
    # Other batch neighbours and positions, same batch size: bit-identical.
    np.testing.assert_array_equal(student.score(images[::-1]), student.score(images)[::-1])
    # Another batch size is another compiled program: equal up to float32 rounding.
    wider = scorer.Scorer.load(student_dir, batch_size=4)
    np.testing.assert_allclose(wider.score(images), student.score(images), rtol=1e-5, atol=1e-6)


def test_score_is_raw_times_mos_scale_on_the_recorded_range(student):
    predictions = student.predict([random_image(0)])
    np.testing.assert_allclose(predictions.score, predictions.raw * MOS_SCALE, rtol=1e-6)
    assert student.score_range == (0.0, MOS_SCALE)
    assert student.lower_better is False


def test_evaluation_predict_fn_returns_raw_outputs_of_model_inputs(student, student_dir):
    images = [random_image(i) for i in range(3)]
    inputs = np.stack([student.prepare(image) for image in images])
    predict = scorer.load_predict_fn(student_dir, batch_size=2)
    np.testing.assert_array_equal(predict(inputs), student.predict(images).raw)
    with pytest.raises(ValueError, match="expects inputs"):
        predict(inputs[:, :8])


def test_paths_pil_images_and_arrays_give_the_same_input(student, tmp_path):
    array = random_image(5)
    path = save_image(tmp_path / "a.png", array)
    expected = array.astype(np.float32) / 255.0
    for source in (path, Image.fromarray(array), array, expected):
        np.testing.assert_array_equal(student.prepare(source), expected)
    np.testing.assert_array_equal(student.score([path, array]), student.score([array, array]))


def test_other_sizes_are_resized_by_pil_bilinear(student, tmp_path):
    array = random_image(6, size=(100, 80))
    expected = np.asarray(Image.fromarray(array).resize((IMAGE_SIZE, IMAGE_SIZE),
                                                        Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_array_equal(student.prepare(save_image(tmp_path / "b.png", array)), expected)
    np.testing.assert_array_equal(student.prepare(array), expected)
    # Float inputs resize in float: the 8-bit path's fixed-point arithmetic and rounding put it
    # at most ~1 level away.
    as_float = student.prepare(array.astype(np.float32) / 255.0)
    np.testing.assert_allclose(as_float, expected, atol=1.5 / 255, rtol=0)


def test_grey_arrays_are_replicated_to_rgb(student):
    grey = random_image(7)[..., 0]
    np.testing.assert_array_equal(student.prepare(grey),
                                  student.prepare(np.repeat(grey[..., None], 3, axis=2)))


@pytest.mark.parametrize("array, message", [
    (np.full((16, 16, 3), 1.5, np.float32), r"must lie in \[0, 1\]"),
    (np.full((16, 16, 3), np.nan, np.float32), r"must lie in \[0, 1\]"),
    (np.zeros((16, 16, 3), np.int32), "must be uint8 or float"),
    (np.zeros((16, 16, 4), np.uint8), r"expected an image array \[H, W, 3\]"),
    (np.zeros((4, 4, 3), np.uint8), "smaller than the minimum 8x8"),
])
def test_bad_arrays_are_refused_with_the_reason(student, array, message):
    with pytest.raises(scorer.InputError, match=message):
        student.score(array)


def test_score_raises_naming_a_bad_file(student, tmp_path):
    path, _ = bad_input_files(tmp_path)["not_an_image"]
    with pytest.raises(scorer.InputError, match="notes.jpg"):
        student.score([random_image(0), path])


def test_every_bad_file_gets_an_error_result_and_the_rest_are_scored(student, tmp_path):
    cases = bad_input_files(tmp_path)
    good = [save_image(tmp_path / f"good{i}.png", random_image(i)) for i in range(3)]
    paths = [good[0]] + [p for p, _ in cases.values()] + good[1:]
    results = list(student.score_files(paths))
    assert [r.path for r in results] == paths
    by_path = {r.path: r for r in results}
    for name, (path, message) in cases.items():
        result = by_path[path]
        assert result.status == "error" and result.score is None, name
        assert path in result.error or os.path.basename(path) in result.error, name
        assert re.search(message, result.error), (name, result.error)
    np.testing.assert_allclose([by_path[p].score for p in good],
                               student.score([random_image(i) for i in range(3)]), rtol=1e-6)


def test_unreadable_file_is_an_error_result(student, tmp_path, monkeypatch):
    path = save_image(tmp_path / "locked.png", random_image(1))
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied", args[0])
        monkeypatch.setattr(scorer, "open", denied, raising=False)
    (result,) = student.score_files([path])
    assert result.status == "error" and "cannot read file" in result.error
    assert "Permission" in result.error and path in result.error


def test_an_unforeseen_decoder_failure_stays_with_its_file(student, tmp_path, monkeypatch):
    hostile = save_image(tmp_path / "hostile.png", random_image(1))
    good = save_image(tmp_path / "good.png", random_image(2))
    load_rgb = scorer.image_lib.load_rgb

    def fragile(data, *, name, max_pixels):
        if name == hostile:
            raise ZeroDivisionError("plugin bug")
        return load_rgb(data, name=name, max_pixels=max_pixels)

    monkeypatch.setattr(scorer.image_lib, "load_rgb", fragile)
    bad, fine = student.score_files([hostile, good])
    assert "unexpected error while decoding (ZeroDivisionError: plugin bug)" in bad.error
    assert fine.ok


def test_pixel_limit_is_configurable(student_dir):
    strict = scorer.Scorer.load(student_dir, batch_size=2, max_pixels=IMAGE_SIZE * IMAGE_SIZE - 1)
    with pytest.raises(scorer.InputError, match="exceeds the limit of 4095"):
        strict.score(random_image(0))


def test_converted_pixel_formats_are_scored(student, tmp_path):
    array = random_image(2)
    grey16 = (array[..., 0].astype(np.uint16) * 257)
    files = {
        "grey.png": lambda p: Image.fromarray(array[..., 0]).save(p),
        "palette.gif": lambda p: Image.fromarray(array).convert("P").save(p),
        "rgba.png": lambda p: Image.fromarray(np.dstack([array, array[..., :1]])).save(p),
        "cmyk.jpg": lambda p: Image.fromarray(array).convert("CMYK").save(p, quality=95),
        "grey16.png": lambda p: Image.fromarray(grey16).save(p),
    }
    paths = []
    for name, write in files.items():
        paths.append(str(tmp_path / name))
        write(paths[-1])
    results = list(student.score_files(paths))
    assert all(r.ok for r in results), [r.error for r in results]
    grey16_result = results[-1]
    np.testing.assert_allclose(grey16_result.raw, student.predict(
        np.repeat(array[..., :1], 3, axis=2)).raw[0], rtol=1e-6)


def test_exif_orientation_is_applied(student, tmp_path):
    array = random_image(4, size=(IMAGE_SIZE, 32))  # 64 wide, 32 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; displayed after a 90 degree clockwise turn
    path = str(tmp_path / "rotated.png")
    Image.fromarray(array).save(path, exif=exif)
    displayed = Image.fromarray(array).transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(student.prepare(path), student.prepare(displayed))
    with Image.open(path) as opened:  # a caller's PIL image is oriented the same way
        np.testing.assert_array_equal(student.prepare(opened), student.prepare(path))


def test_a_bundle_without_mos_scale_needs_one(tmp_path):
    directory = make_student_bundle(tmp_path / "no_scale", metadata={"image_size": IMAGE_SIZE})
    with pytest.raises(ValueError, match="mos_scale"):
        scorer.Scorer.load(directory)
    overridden = scorer.Scorer.load(directory, mos_scale=5.0, batch_size=2)
    assert overridden.score_range == (0.0, 5.0)
    predictions = overridden.predict(random_image(0))
    np.testing.assert_allclose(predictions.score, predictions.raw * 5.0, rtol=1e-6)


def test_workdir_resolves_to_best_model(tmp_path, student_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(student_dir, workdir / inference.BEST_MODEL_SUBDIR)
    model_bundle, resolved = scorer.resolve_model(str(workdir))
    assert resolved.endswith(inference.BEST_MODEL_SUBDIR) and model_bundle.kind == "student"
    with pytest.raises(FileNotFoundError, match="neither a model bundle"):
        scorer.resolve_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model not found"):
        scorer.resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a bundle directory"):
        scorer.resolve_model(str(tmp_path / "weights.bin"))


def test_latent_sampling_is_refused_for_a_student(student_dir):
    with pytest.raises(ValueError, match="teacher only"):
        scorer.Scorer.load(student_dir, latent="sample")


# --------------------------------------------------------------------------- teacher


def test_teacher_scores_use_the_bundle_prompts_and_scale(teacher_dir):
    model = scorer.Scorer.load(teacher_dir, batch_size=2)
    assert model.module.config.latent == "mean"
    pictures = [random_image(i, size=(80, 72)) for i in range(3)]
    predictions = model.predict(pictures, return_maps=True)
    assert predictions.quality_map.shape == (3, MAP_SIZE, MAP_SIZE, 4)
    np.testing.assert_allclose(predictions.score, predictions.raw * MOS_SCALE, rtol=1e-6)
    assert np.ptp(predictions.raw) > 1e-3
    alone = np.concatenate([model.predict(p).raw for p in pictures])
    np.testing.assert_allclose(predictions.raw, alone, rtol=PADDING_RTOL, atol=PADDING_ATOL)
    # Other prompt embeddings, same architecture (and compiled program): other scores.
    loaded = bundle.load_bundle(teacher_dir)
    reprompted = scorer.Scorer(dataclasses.replace(loaded, prompts=loaded.prompts[::-1] * 2),
                               batch_size=2)
    assert not np.allclose(reprompted.predict(pictures).raw, predictions.raw, rtol=1e-3)


def test_teacher_posterior_sample_is_fixed_per_image(teacher_dir):
    sampled = scorer.Scorer.load(teacher_dir, batch_size=2, latent="sample", seed=7)
    images = [random_image(i) for i in range(3)]
    first = sampled.score(images)
    np.testing.assert_array_equal(sampled.score(images), first)
    # Another order and batch composition: each image keeps its own noise.
    reordered = sampled.score([images[2], images[0], images[1]])
    np.testing.assert_allclose(reordered, first[[2, 0, 1]], rtol=PADDING_RTOL, atol=PADDING_ATOL)
    mean_scores = scorer.Scorer.load(teacher_dir, batch_size=2).score(images)
    assert not np.allclose(first, mean_scores, rtol=1e-3), "sampling changed nothing"
    other_seed = scorer.Scorer.load(teacher_dir, batch_size=2, latent="sample", seed=8)
    assert not np.allclose(other_seed.score(images), first, rtol=1e-3)



# --------------------------------------------------------------------------- buckets, batches


def test_padding_goes_to_the_next_bucket_only():
    assert inference.bucket_sizes(8) == (1, 2, 4, 8)
    assert inference.bucket_sizes(6) == (1, 2, 4, 6)
    assert [inference.bucket_size(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="1 to 8 images"):
        inference.bucket_size(9, 8)


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_scores_are_bit_identical_whatever_the_batch_neighbours(kind, student_dir, teacher_dir):
    """Every bucket (1, 2, 4) and position, another batch_size: the very same bits per image."""
    directory = student_dir if kind == "student" else teacher_dir
    model = scorer.Scorer.load(directory, batch_size=4)
    images = [random_image(i) for i in range(4)]
    alone = np.concatenate([model.score(image) for image in images])
    np.testing.assert_array_equal(model.score(images), alone)           # bucket 4
    np.testing.assert_array_equal(model.score(images[1:]), alone[1:])   # 3 images -> bucket 4
    np.testing.assert_array_equal(model.score(images[2:0:-1]), alone[2:0:-1])  # bucket 2
    larger = scorer.Scorer.load(directory, batch_size=8)
    np.testing.assert_array_equal(larger.score(images[::-1]), alone[::-1])


def test_a_batch_array_is_scored_as_its_images(student):
    images = np.stack([random_image(i) for i in range(3)])
    np.testing.assert_array_equal(student.score(images),
                                  student.score([images[0], images[1], images[2]]))
    floats = images.astype(np.float32) / 255.0
    with pytest.raises(scorer.InputError, match=r"^input 1 \(ndarray\): float image values"):
        student.score(np.stack([floats[0], floats[1] * 2.0]))


def test_messages_name_inputs_as_given_never_a_stream(student, tmp_path):
    path = str(tmp_path / "notes.jpg")
    with open(path, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(scorer.InputError) as caught:
        student.score(path)
    assert str(caught.value) == (f"{path}: cannot decode image (UnidentifiedImageError: cannot "
                                 f"identify image file {path})")
    with pytest.raises(scorer.InputError, match=r"^missing\.png: no such file$"):
        student.score("missing.png")


def test_non_finite_scores_are_errors_not_numbers(tmp_path):
    variables = student_variables()
    head = bundle.flatten_variables(variables)
    head["params/fc3/bias"] = np.full_like(head["params/fc3/bias"], np.nan)
    broken = bundle.Bundle("student", dataclasses.asdict(STUDENT_CONFIG),
                           bundle.unflatten_variables(head), metadata=default_metadata())
    model = scorer.Scorer(broken, batch_size=2)
    with pytest.raises(scorer.NonFiniteScoreError, match="input 0 .*not finite"):
        model.score(random_image(0))
    path = save_image(tmp_path / "a.png", random_image(0))
    (result,) = model.score_files([path])
    assert result.status == "error" and result.score is None
    assert result.error == f"{path}: the model's score is not finite (nan); the model or its " \
                           f"weights are broken"
