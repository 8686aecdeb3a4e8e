"""Importing an ONNX student made the way the authors made theirs (torch's TorchScript exporter in
eval mode, BatchNorms folded), checked against onnxruntime on the same file."""

import json
import os
import shutil
import struct

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import torch
from PIL import Image

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax.convert import onnx_student
from dpiqa_jax.dev.torch_onnx_student import (
    TorchAuthorsStudent,
    export_like_the_authors,
    randomize_batch_norms,
)
from dpiqa_jax.models.efficientnet import TorchBatchNorm
from dpiqa_jax.scorer import Scorer

from helpers import run_module

SIDE = 64  # B0 at 64x64: 2x2 features -> 4x4 -> nearest to 64x64, as B7 at 512 (16 -> 32 -> 64)
HIDDEN = 16
# Error relative to the reference's largest magnitude. ORT, XLA and torch sum the convolutions in
# other orders, and the BatchNorm statistics measured on 3 photos at 2x2 features divide by small
# variances, which amplifies rounding: torch eager vs ORT on this file differ by 2.6e-5 (score)
# and 1.7e-5 (map), ours vs ORT by 2.3e-5 and 1.4e-5 (measured). The bound is ~4x that spread.
RELATIVE_TOLERANCE = 1e-4


def _photos(side: int) -> np.ndarray:
    """[3, side, side, 3] float32 in [0, 1]: scikit-image photographs resized as the authors do."""
    images = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())
    return np.stack([np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR),
                                np.float32) / 255.0 for image in images])


def _nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def authors_onnx(tmp_path_factory):
    """A B0 student of the authors' structure, seeded weights and BatchNorm statistics, exported
    as they did; returns (path, the torch model)."""
    torch.manual_seed(0)
    model = randomize_batch_norms(TorchAuthorsStudent("b0", SIDE, hidden=HIDDEN), seed=1,
                                  calibration_images=torch.from_numpy(_nchw(_photos(SIDE))))
    path = str(tmp_path_factory.mktemp("onnx") / "student_model.onnx")
    export_like_the_authors(model, path, SIDE)
    return path, model


@pytest.fixture(scope="module")
def imported(authors_onnx, tmp_path_factory):
    path, _ = authors_onnx
    return bundle_lib.load_bundle(onnx_student.import_onnx_student(
        path, str(tmp_path_factory.mktemp("bundle"))))


def _jax_outputs(model_bundle, images):
    module = model_bundle.build_model()
    raw, quality_map = jax.jit(lambda v, x: module.apply(v, x, train=False))(
        model_bundle.variables, images)
    return np.asarray(raw), np.asarray(quality_map).transpose(0, 3, 1, 2)


def _assert_close(ours, reference, what):
    error = np.abs(ours - reference).max() / np.abs(reference).max()
    assert error <= RELATIVE_TOLERANCE, f"{what}: relative error {error:.2e}"


def test_the_file_is_what_the_authors_export(authors_onnx):
    model = onnx.load(authors_onnx[0])
    ops = [node.op_type for node in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("ConvTranspose") == 1
    assert ops.count("Conv") == 81 and ops.count("Resize") == 1 and ops.count("Gemm") == 3
    names = {t.name for t in model.graph.initializer}
    assert "base_model.features.1.0.block.1.fc1.weight" in names
    assert any(name.startswith("onnx::Conv_") for name in names)


def test_imported_bundle_scores_as_onnxruntime_on_photos(authors_onnx, imported):
    path, torch_model = authors_onnx
    images = _photos(SIDE)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    score, quality_map = session.run(None, {"input": _nchw(images)})
    raw, our_map = _jax_outputs(imported, images)
    _assert_close(raw, score[:, 0], "score")
    _assert_close(our_map, quality_map, "map")
    assert np.ptp(score) > 1e-3  # scores differ between the photos: the comparison can fail
    with torch.no_grad():
        torch_score, _ = torch_model(torch.from_numpy(_nchw(images)))
    _assert_close(raw, torch_score[:, 0].numpy(), "score vs torch")
    assert imported.model_config["backbone"] == "b0"
    assert imported.metadata["mos_scale"] == 100.0 and imported.metadata["image_size"] == SIDE


def test_folded_batch_norm_is_an_exact_identity_plus_bias(imported):
    stem_bn = imported.variables["params"]["base_model"]["features_0_1"]
    stats = imported.variables["batch_stats"]["base_model"]["features_0_1"]
    assert np.all(np.asarray(stem_bn["scale"]) == 1) and np.all(np.asarray(stats["mean"]) == 0)
    x = np.random.default_rng(0).normal(size=(2, 5, 5, stem_bn["bias"].shape[0])).astype(
        np.float32) * 10
    variables = {"params": stem_bn, "batch_stats": stats}
    y = jax.jit(lambda v, x: TorchBatchNorm(epsilon=1e-5).apply(v, x, train=False))(variables, x)
    np.testing.assert_array_equal(np.asarray(y), x + np.asarray(stem_bn["bias"]))


def _pad_before_conv(layers: torch.nn.Sequential, value: float = 0.0,
                     pad: type = torch.nn.ConstantPad2d) -> None:
    """layers[0] (a Conv2d with padding p) becomes Pad(p) -> Conv2d without padding."""
    conv = layers[0]
    amount = conv.padding[0]
    conv.padding = (0, 0)
    layers[0] = torch.nn.Sequential(pad(amount) if pad is not torch.nn.ConstantPad2d
                                    else pad(amount, value), conv)


def _variant_onnx(tmp_path, *, pad_value: float = 0.0, pad: type = torch.nn.ConstantPad2d,
                  resize_by_scale: bool = False) -> tuple[str, torch.nn.Module]:
    """The authors' B0 student with the stem and the first depthwise conv padded by a Pad layer
    and optionally the map resized by a scale factor, exported as they export."""
    torch.manual_seed(0)
    model = TorchAuthorsStudent("b0", SIDE, hidden=HIDDEN, resize_by_scale=resize_by_scale)
    features = model.base_model.features
    for layers in (features[0], features[1][0].block[0]):
        _pad_before_conv(layers, pad_value, pad)
    model = randomize_batch_norms(model, seed=1,
                                  calibration_images=torch.from_numpy(_nchw(_photos(SIDE))))
    path = str(tmp_path / "variant.onnx")
    export_like_the_authors(model, path, SIDE)
    return path, model


def test_zero_pads_and_a_resize_by_scales_import_and_score_as_onnxruntime(tmp_path):
    path, _ = _variant_onnx(tmp_path, resize_by_scale=True)
    model = onnx.load(path)
    ops = [node.op_type for node in model.graph.node]
    resize = next(node for node in model.graph.node if node.op_type == "Resize")
    assert ops.count("Pad") == 2 and resize.input[2] and len(resize.input) == 3  # by scales
    imported = bundle_lib.load_bundle(onnx_student.import_onnx_student(
        path, str(tmp_path / "bundle")))
    images = _photos(SIDE)
    score, quality_map = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"input": _nchw(images)})
    raw, our_map = _jax_outputs(imported, images)
    _assert_close(raw, score[:, 0], "score")
    _assert_close(our_map, quality_map, "map")
    assert np.ptp(score) > 1e-3


@pytest.mark.parametrize("value, pad", [(0.5, torch.nn.ConstantPad2d),
                                        (0.0, torch.nn.ReflectionPad2d)],
                         ids=["non-zero value", "reflection"])
def test_a_pad_that_is_not_zero_padding_is_refused(tmp_path, value, pad):
    path, _ = _variant_onnx(tmp_path, pad_value=value, pad=pad)
    with pytest.raises(onnx_student.OnnxStudentError, match=r"Pad node .*expected zeros added"):
        onnx_student.read_onnx_student(path)


@pytest.mark.parametrize("scale, message", [
    (15.25, r"fc1.* reads 32768 features, the map before it has 29768"),  # 4 x 15.25 = 61
    (15.3, r"Resize node .* by \[1\.0, 1\.0, 15\.3"),  # 4 x 15.3: no whole side
])
def test_a_resize_by_scales_off_the_map_size_is_refused(tmp_path, scale, message):
    path, _ = _variant_onnx(tmp_path, resize_by_scale=True)

    def mutate(model):
        resize = next(node for node in model.graph.node if node.op_type == "Resize")
        constant = next(node for node in model.graph.node if node.output[0] == resize.input[2])
        constant.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(
            np.array([1, 1, scale, scale], np.float32)))
    with pytest.raises(onnx_student.OnnxStudentError, match=message):
        onnx_student.read_onnx_student(_mutated(path, tmp_path, mutate))


def _mutated(path, tmp_path, mutate):
    model = onnx.load(path)
    mutate(model)
    out = str(tmp_path / "mutated.onnx")
    onnx.save(model, out)
    return out


def _node(model, name_part, op_type):
    return next(n for n in model.graph.node if name_part in n.name and n.op_type == op_type)


def test_a_changed_activation_names_the_node(authors_onnx, tmp_path):
    def mutate(model):
        _node(model, "features.3/features.3.0/block/block.1", "Sigmoid").op_type = "Tanh"
    with pytest.raises(onnx_student.OnnxStudentError, match=r"features\.3\.0/block/block\.1.*Tanh"):
        onnx_student.read_onnx_student(_mutated(authors_onnx[0], tmp_path, mutate))


def test_a_changed_stride_names_the_node(authors_onnx, tmp_path):
    def mutate(model):
        conv = _node(model, "features.2/features.2.0/block/block.1", "Conv")
        strides = next(a for a in conv.attribute if a.name == "strides")
        strides.ints[:] = [1, 1]
    with pytest.raises(onnx_student.OnnxStudentError,
                       match=r"features\.2\.0/block/block\.1.*strides.*\[1, 1\]"):
        onnx_student.read_onnx_student(_mutated(authors_onnx[0], tmp_path, mutate))


def test_an_extra_node_is_refused(authors_onnx, tmp_path):
    def mutate(model):
        model.graph.node.append(onnx.helper.make_node("Neg", ["input"], ["dangling"],
                                                      name="sneaky"))
    with pytest.raises(onnx_student.OnnxStudentError, match="'sneaky' \\(Neg\\)"):
        onnx_student.read_onnx_student(_mutated(authors_onnx[0], tmp_path, mutate))


def test_a_wrong_map_size_is_refused(authors_onnx, tmp_path):
    def mutate(model):
        resize = _node(model, "Resize", "Resize")
        resize.attribute.append(onnx.helper.make_attribute("antialias", 1))
    with pytest.raises(onnx_student.OnnxStudentError, match="Resize node"):
        onnx_student.read_onnx_student(_mutated(authors_onnx[0], tmp_path, mutate))


def test_truncated_and_foreign_files_are_refused(authors_onnx, tmp_path):
    data = open(authors_onnx[0], "rb").read()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(onnx_student.OnnxStudentError, match="truncated.onnx"):
        onnx_student.read_onnx_student(str(truncated))
    assert onnx_student.looks_like_onnx(authors_onnx[0])
    pickle = tmp_path / "state.pth"
    torch.save({"w": torch.zeros(1)}, pickle)
    assert not onnx_student.looks_like_onnx(str(pickle))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (264 - len(header))  # its length's first byte is ONNX's first byte, 0x08
    safetensors = tmp_path / "w.safetensors"
    safetensors.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    assert not onnx_student.looks_like_onnx(str(safetensors))


def test_external_data_outside_the_folder_is_refused(authors_onnx, tmp_path):
    inside = tmp_path / "model"
    inside.mkdir()
    model = onnx.load(authors_onnx[0])
    path = str(inside / "student.onnx")
    onnx.save(model, path, save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    onnx_student.read_onnx_student(path)  # inside its folder: accepted
    escaped = onnx.load(path, load_external_data=False)
    for tensor in escaped.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    shutil.copy(inside / "weights.bin", tmp_path / "weights.bin")
    bad = str(inside / "escaped.onnx")
    with open(bad, "wb") as f:
        f.write(escaped.SerializeToString())
    with pytest.raises(onnx_student.OnnxStudentError, match="outside the model's folder"):
        onnx_student.read_onnx_student(bad)
    os.remove(inside / "weights.bin")
    with pytest.raises(onnx_student.OnnxStudentError, match="missing or too short"):
        onnx_student.read_onnx_student(path)


def test_convert_cli_recognises_onnx_by_content(authors_onnx, tmp_path):
    checkpoint = tmp_path / "student_model.bin"  # the name says nothing; the content does
    shutil.copy(authors_onnx[0], checkpoint)
    completed = run_module("launch.convert", "official-student", "--checkpoint", str(checkpoint),
                           "--out", str(tmp_path / "bundle"))
    assert completed.returncode == 0, completed.stderr
    assert bundle_lib.load_bundle(str(tmp_path / "bundle")).model_config["backbone"] == "b0"

    def mutate(model):
        _node(model, "features.4/features.4.1/block/block.2", "GlobalAveragePool").op_type = \
            "GlobalMaxPool"
    completed = run_module("launch.convert", "official-student", "--checkpoint",
                           _mutated(authors_onnx[0], tmp_path, mutate), "--out",
                           str(tmp_path / "refused"))
    assert completed.returncode == 1
    assert "features.4.1/block/block.2" in completed.stderr and "GlobalMaxPool" in completed.stderr


def test_scorer_scores_an_onnx_file_as_onnxruntime(authors_onnx):
    path, _ = authors_onnx
    images = _photos(SIDE)
    scorer = Scorer.load(path, batch_size=2)
    predictions = scorer.predict(list(images), return_maps=True)
    score, quality_map = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"input": _nchw(images)})
    _assert_close(predictions.score, 100.0 * score[:, 0], "score")
    _assert_close(predictions.quality_map.transpose(0, 3, 1, 2), quality_map, "map")
