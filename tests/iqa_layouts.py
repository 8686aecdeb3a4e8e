"""Miniature copies of the IQA datasets' official layouts, for the builder and pipeline tests.

Each `make_<dataset>(root)` writes a few tiny images and the label file(s) in the real format
(.csv, .mat via scipy, .xlsx via openpyxl) under `root` and returns a `Layout`: the manual
directory and the expected records {name: (mos, extras)}.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import openpyxl
import scipy.io
from PIL import Image

from dpiqa_jax.data import builders


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


def _csv(path: Path, header: str, rows: list[str]) -> None:
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
    _csv(root / "koniq10k_scores_and_distributions.csv",
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
    _csv(root / "labels_image.csv", "name,mos", [f"{n},{m}" for n, m in zip(names, mos)])
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
    _csv(root / "dmos.csv", "dist_img,ref_img,dmos,var", rows)
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
    _csv(root / "data.csv",
         "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align", rows)
    return Layout(root, root / "images", expected)


def make_iqa_folder(root: Path, count: int = 3) -> Layout:
    names = [f"photo_{i}.png" if i % 2 else f"sub/photo_{i}.jpg" for i in range(count)]
    for i, name in enumerate(names):
        _write(root / "images" / name, encoded_image(i, fmt="PNG" if name.endswith("png")
                                                     else "JPEG"))
    mos = [1.0 + 2 * i for i in range(count)]
    _csv(root / "labels.csv", "filename,mos,comment", [f"{n},{m},x" for n, m in zip(names, mos)])
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
