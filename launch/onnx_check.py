r"""The full-size ONNX import check, run by hand (dev only: needs torch, onnx and onnxruntime).

  python -m launch.onnx_check --workdir=/tmp/onnx_b7

The authors' B7 student at 512x512 with seeded weights and BatchNorm statistics, exported as they
exported theirs, imported by `launch.convert`'s reader, then scored by JAX, ONNX Runtime and
PyTorch eager on the same photographs. One JSON line per step. Heavy (several GB, minutes). The
CPU speed comparison with ONNX Runtime is `python -m launch.benchmark --onnxruntime`.
"""

import json
import os
import time

from absl import flags

from . import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch directory for the files.", required=True)


def _photos(side: int, count: int):
    # Imported when the check runs, as below, so that `--help` needs none of it.
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
    # The dev-only dependencies (torch, onnxruntime) are imported when the check runs, so that
    # `--help` and the command list work without them.
    # pylint: disable=import-outside-toplevel
    import jax
    import numpy as np
    import onnxruntime as ort
    import torch

    from dpiqa_jax import bundle as bundle_lib
    from dpiqa_jax.convert import onnx_student
    from dpiqa_jax.dev.torch_onnx_student import (
        TorchAuthorsStudent,
        export_like_the_authors,
        randomize_batch_norms,
    )

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


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    check_import(_WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
