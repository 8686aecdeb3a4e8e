r"""Full-size ONNX checks run by hand (dev only: needs torch, onnx and onnxruntime).

  # the authors' B7 student at 512x512 exported as they did, imported, scored by JAX and ORT
  python -m launch.onnx_check --mode=import --workdir=/tmp/onnx_b7
  # CPU student inference: JAX, PyTorch eager and ONNX Runtime (our export), same threads
  python -m launch.onnx_check --mode=benchmark --workdir=/tmp/onnx_bench

Both print one JSON line per result. Heavy (B7 at 512: several GB, minutes).
"""

import json
import os
import time

from absl import flags

from . import cli

MODES = ("import", "benchmark")
_MODE = flags.DEFINE_enum("mode", None, list(MODES), "What to check.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch directory for the files.", required=True)
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "CPU threads for torch and ORT "
                                "(XLA uses every core).", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 3, "benchmark: timed calls per measurement.", lower_bound=1)
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "benchmark: batch sizes.")
_MODELS = flags.DEFINE_list("models", ["b7:512", "lite0:224"], "benchmark: backbone:side pairs.")


def _photos(side: int, count: int):
    # pylint: disable=import-outside-toplevel
    import numpy as np
    import skimage.data
    from PIL import Image
    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
              skimage.data.rocket()]
    return np.stack([np.asarray(Image.fromarray(images[i % len(images)]).resize(
        (side, side), Image.BILINEAR), np.float32) / 255.0 for i in range(count)])


def _report(**record) -> None:
    print(json.dumps(record), flush=True)


def check_import(workdir: str) -> None:
    """B7 authors' student -> their export -> our import; our JAX scores vs ORT on the file."""
    # pylint: disable=import-outside-toplevel
    import jax
    import numpy as np
    import onnxruntime as ort
    import torch

    from dpiqa_jax import bundle as bundle_lib
    from dpiqa_jax.convert import onnx_student
    from dpiqa_jax.reference.torch_onnx_student import (TorchAuthorsStudent,
                                                        export_like_the_authors,
                                                        randomize_batch_norms)

    side = 512
    images = _photos(side, 2)
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    torch.manual_seed(0)
    model = randomize_batch_norms(TorchAuthorsStudent("b7", side), seed=1,
                                  calibration_images=torch.from_numpy(nchw))
    with torch.no_grad():
        torch_score, torch_map = (t.numpy() for t in model(torch.from_numpy(nchw)))
    path = os.path.join(workdir, "student_model.onnx")
    start = time.perf_counter()
    export_like_the_authors(model, path, side)
    _report(step="torch export", seconds=round(time.perf_counter() - start, 1),
            bytes=os.path.getsize(path))
    del model
    start = time.perf_counter()
    out = onnx_student.import_onnx_student(path, os.path.join(workdir, "bundle"))
    _report(step="import", seconds=round(time.perf_counter() - start, 1))
    model_bundle = bundle_lib.load_bundle(out)
    module = model_bundle.build_model()
    raw, quality_map = jax.jit(lambda v, x: module.apply(v, x, train=False))(
        model_bundle.variables, images)
    raw = np.asarray(raw)
    quality_map = np.asarray(quality_map).transpose(0, 3, 1, 2)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    score, onnx_map = session.run(None, {"input": nchw})
    _report(step="scores", backbone=model_bundle.model_config["backbone"], jax=raw.tolist(),
            onnxruntime=score[:, 0].tolist(), pytorch_eager=torch_score[:, 0].tolist())
    for name, (ours, ours_map) in (("jax", (raw, quality_map)),
                                   ("pytorch_eager", (torch_score[:, 0], torch_map))):
        _report(step=f"{name} vs onnxruntime",
                score_max_abs_err=float(np.abs(ours - score[:, 0]).max()),
                score_max_rel_err=float(np.abs(ours - score[:, 0]).max() / np.abs(score).max()),
                map_max_rel_err=float(np.abs(ours_map - onnx_map).max() / np.abs(onnx_map).max()))


def _time(fn, steps: int) -> float:
    fn()  # warm-up (compilation, allocation)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


class _TorchLiteStudent:
    """The student head on the `efficientnet_lite_pytorch` Lite backbone (PyTorch eager)."""

    def __new__(cls, backbone: str):
        # pylint: disable=import-outside-toplevel
        import torch
        import torch.nn.functional as F
        from efficientnet_lite_pytorch import EfficientNet

        class Student(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.base_model = EfficientNet.from_name(f"efficientnet-{backbone}")
                self.conv_transpose = torch.nn.ConvTranspose2d(1280, 8, 3, 2, 1, 1)
                self.fc1 = torch.nn.Linear(8 * 64 * 64, 512)
                self.fc2 = torch.nn.Linear(512, 512)
                self.fc3 = torch.nn.Linear(512, 1)

            def forward(self, x):
                x = torch.relu(self.conv_transpose(self.base_model.extract_features(x)))
                quality_map = F.interpolate(x, size=(64, 64), mode="nearest")
                h = torch.relu(self.fc2(torch.relu(self.fc1(torch.flatten(quality_map, 1)))))
                return self.fc3(h), quality_map

        return Student().eval()


def check_benchmark(workdir: str) -> None:
    """img/s of student inference, fp32, random weights, per backbone and batch."""
    # pylint: disable=import-outside-toplevel
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    import onnxruntime as ort
    import torch

    from dpiqa_jax import bundle as bundle_lib
    from dpiqa_jax import onnx_export
    from dpiqa_jax.models.student import Student, StudentConfig
    from dpiqa_jax.reference.torch_models import build_torch_student

    torch.set_num_threads(_THREADS.value)
    options = ort.SessionOptions()
    options.intra_op_num_threads = _THREADS.value
    for entry in _MODELS.value:
        backbone, side = entry.split(":")
        side = int(side)
        config = StudentConfig(backbone=backbone)
        module = Student(config)
        variables = jax.tree.map(np.asarray, module.init(
            jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False))
        path = os.path.join(workdir, f"{backbone}.onnx")
        onnx_export.export_onnx(bundle_lib.Bundle(
            "student", dataclasses.asdict(config), variables,
            metadata={"mos_scale": 100.0, "image_size": side}), path)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if backbone.startswith("lite"):
            torch_model = _TorchLiteStudent(backbone)
        else:
            torch_model, _ = build_torch_student(config, prefer_torchvision=False)
            torch_model.eval()
        apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
        for batch in map(int, _BATCHES.value):
            images = _photos(side, batch)
            nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
            torch_input = torch.from_numpy(nchw)
            seconds = {
                "jax": _time(lambda: jax.block_until_ready(apply(variables, images)),
                             _STEPS.value),
                "onnxruntime": _time(lambda: session.run(None, {"input": nchw}), _STEPS.value),
            }
            with torch.no_grad():
                seconds["pytorch"] = _time(lambda: torch_model(torch_input), _STEPS.value)
            rates = {name: round(batch / s, 3) for name, s in seconds.items()}
            _report(backbone=backbone, side=side, batch=batch, threads=_THREADS.value,
                    img_per_s=rates,
                    jax_over_onnxruntime=round(rates["jax"] / rates["onnxruntime"], 2),
                    jax_over_pytorch=round(rates["jax"] / rates["pytorch"], 2))


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    if _MODE.value == "import":
        check_import(_WORKDIR.value)
    else:
        check_benchmark(_WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
