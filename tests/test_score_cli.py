"""`python -m launch.score`: input expansion, output rows, quality-map files, exit codes.

Expansion and writing are tested in-process on the library functions; the command itself runs in
subprocesses (exit codes, flags, two runs giving identical scores).
"""

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from dpiqa_jax import heatmap, score_files, scorer
from dpiqa_jax.eval import rows as rows_lib

from helpers import IMAGE_SIZE, MAP_SIZE, bad_input_files, random_image, run_module, save_image


def _tree(root):
    """root/a.png, root/sub/b.JPG, root/sub/deeper/c.png, root/sub/notes.txt, root/empty/."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "sub" / "notes.txt").write_text("not an image")
    return [save_image(root / "a.png", random_image(0)),
            save_image(root / "sub" / "b.JPG", random_image(1)),
            save_image(root / "sub" / "deeper" / "c.png", random_image(2))]


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_score(*args, cache_dir=None):
    env = {}
    if cache_dir:  # share compiled programs between the CLI runs of this test module
        env = {"JAX_COMPILATION_CACHE_DIR": str(cache_dir),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return run_module("launch.score", "--noprogress", *args, env=env)


# --------------------------------------------------------------------------- expansion


def test_folders_recurse_sorted_with_image_extensions_only(tmp_path):
    a, b, c = _tree(tmp_path)
    paths, failed = score_files.expand_inputs([str(tmp_path)])
    assert paths == [a, b, c] and failed == []


def test_globs_lists_and_plain_paths_expand_in_order_each_path_once(tmp_path):
    a, b, c = _tree(tmp_path)
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text("# comment\n\ndeeper/c.png\n" + a + "\n")
    paths, failed = score_files.expand_inputs(
        [str(tmp_path / "**" / "*.png"), "@" + str(listing), b, str(tmp_path / "missing.png")])
    assert paths == [a, c, b, str(tmp_path / "missing.png")]
    assert failed == []


def test_what_expands_to_nothing_is_reported(tmp_path):
    _tree(tmp_path)
    paths, failed = score_files.expand_inputs(
        [str(tmp_path / "empty"), str(tmp_path / "*.webp"), "@" + str(tmp_path / "nolist.txt")])
    assert paths == []
    reasons = {result.path: result.error for result in failed}
    assert "holds no image files" in reasons[str(tmp_path / "empty")]
    assert "matches no file" in reasons[str(tmp_path / "*.webp")]
    assert "cannot read the list file" in reasons["@" + str(tmp_path / "nolist.txt")]
    assert all(result.status == "error" for result in failed)


def test_a_directory_in_a_list_is_an_input_error(student, tmp_path):
    _tree(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("sub\n")
    paths, _ = score_files.expand_inputs(["@" + str(listing)])
    (result,) = student.score_files(paths)
    assert "is a directory, expected an image file" in result.error


def test_map_stems_disambiguate_collisions_by_path_alone():
    paths = ["x/a.jpg", "y/a.png", "z/b.png"]
    stems = score_files.map_stems(paths)
    assert stems["z/b.png"] == "b"
    assert stems["x/a.jpg"] != stems["y/a.png"]
    assert stems["x/a.jpg"].startswith("a-") and len(stems["x/a.jpg"]) == len("a-") + 8
    assert score_files.map_stems(paths[::-1]) == stems
    assert score_files.map_stems(["x/a.jpg", "y/a.png", "w/a.gif"])["x/a.jpg"] == stems["x/a.jpg"]


# --------------------------------------------------------------------------- writing


def test_csv_rows_in_order_with_errors_and_maps(student, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first = save_image(tmp_path / "x" / "a.png", random_image(0))
    second = save_image(tmp_path / "y" / "a.png", random_image(1))
    broken = bad_input_files(tmp_path)["truncated"][0]
    maps_dir = tmp_path / "maps"
    stream = io.StringIO()
    summary = score_files.score_to_output(student, [first, broken, second], stream, "csv",
                                     maps_dir=str(maps_dir))
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert list(rows[0]) == list(scorer.RESULT_COLUMNS)
    assert [r["path"] for r in rows] == [first, broken, second]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["score"] == "" and "cannot decode" in rows[1]["error"]
    assert summary.scored == 2 and summary.failed == 1
    # The tiny random model scores below 0, outside its recorded range [0, 100]: kept, counted.
    assert all(float(rows[i]["score"]) < 0 for i in (0, 2)) and summary.out_of_range == 2
    expected = student.predict([random_image(0), random_image(1)], return_maps=True)
    # Written with 6 significant digits: exactly the API's numbers so formatted.
    assert [rows[0]["score"], rows[2]["score"]] == [f"{v:.6g}" for v in expected.score]
    assert rows[0]["raw"] == f"{expected.raw[0]:.6g}"
    stems = score_files.map_stems([first, broken, second])
    assert [r["map_path"] for r in rows] == [str(maps_dir / (stems[first] + ".npy")), "",
                                             str(maps_dir / (stems[second] + ".npy"))]
    for index, path in ((0, first), (1, second)):
        saved = np.load(maps_dir / (stems[path] + ".npy"))
        # Channel-last, as the API returns it: the very same array.
        assert saved.dtype == np.float32 and saved.shape == (MAP_SIZE, MAP_SIZE, 8)
        np.testing.assert_array_equal(saved, expected.quality_map[index])
        with Image.open(maps_dir / (stems[path] + ".png")) as png:
            assert png.size == (IMAGE_SIZE, IMAGE_SIZE) and png.mode == "RGB"
    assert sorted(os.listdir(maps_dir)) == sorted(
        stems[p] + ext for p in (first, second) for ext in (".npy", ".png"))


def test_json_output_lists_the_same_rows(student, tmp_path):
    path = save_image(tmp_path / "a.png", random_image(0))
    failed = [scorer.FileResult(path="@gone.txt", error="@gone.txt: cannot read the list file")]
    stream = io.StringIO()
    score_files.score_to_output(student, [path], stream, "json", failed_inputs=failed)
    rows = json.loads(stream.getvalue())
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert set(rows[1]) == set(scorer.RESULT_COLUMNS) and rows[1]["error"] is None
    assert rows[1]["score"] == float(f"{student.score(path)[0]:.6g}")


def test_heatmap_colours_follow_the_channel_mean():
    quality_map = np.zeros((8, 8, 2), np.float32)
    quality_map[:4, :4] = 3.0  # the top-left quadrant is the hottest
    base = np.zeros((16, 16, 3), np.uint8)
    opaque = np.asarray(heatmap.overlay(base, quality_map, alpha=1.0, colormap="gray"))
    assert opaque.shape == (16, 16, 3)
    assert (opaque[:6, :6] == 255).all() and (opaque[10:, 10:] == 0).all()
    half = np.asarray(heatmap.overlay(np.full((16, 16, 3), 200, np.uint8), quality_map,
                                      alpha=0.5, colormap="gray"))
    assert abs(int(half[0, 0, 0]) - 228) <= 1 and abs(int(half[15, 15, 0]) - 100) <= 1
    flat = heatmap.map_intensity(np.ones((8, 8, 2), np.float32))
    assert (flat == 0).all()
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        heatmap.map_intensity(np.zeros((8, 8), np.float32))


def test_output_format_follows_the_extension_unless_given():
    assert rows_lib.output_format("s.json", None) == "json"
    assert rows_lib.output_format("s.csv", None) == "csv"
    assert rows_lib.output_format(None, None) == "csv"
    assert rows_lib.output_format("s.json", "csv") == "csv"


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize("args, message", [
    ([], "no inputs"),
    (["--output", "/nonexistent/dir/s.csv", "a.png"], "directory does not exist"),
    (["--checkpoint", "/nonexistent/model", "a.png"], "cannot load --checkpoint"),
    (["--batch_size=0", "a.png"], "flag --batch_size=0"),
    (["--format", "xml", "a.png"], "flag --format=xml"),
    (["--cpu_devices=0", "a.png"], "flag --cpu_devices=0"),
])
def test_usage_errors_exit_2(student_dir, args, message):
    if "--checkpoint" not in args:
        args = ["--checkpoint", student_dir, *args]
    completed = run_score(*args)
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr


def test_missing_checkpoint_flag_exits_2():
    completed = run_score("a.png")
    assert completed.returncode == 2 and "--checkpoint" in completed.stderr


def test_cli_scores_folders_globs_lists_reports_failures_and_repeats_exactly(student_dir,
                                                                            tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    a, b, c = _tree(photos)
    bad = bad_input_files(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text(bad["not_an_image"][0] + "\n" + bad["truncated"][0] + "\n")
    cache = tmp_path / "jax_cache"
    out_csv, maps_dir = tmp_path / "scores.csv", tmp_path / "maps"
    mixed = run_score("--checkpoint", student_dir, "--output", str(out_csv), "--batch-size", "2",
                      "--save-maps", str(maps_dir), str(photos / "sub"), str(photos / "*.png"),
                      "@" + str(listing), cache_dir=cache)
    assert mixed.returncode == 1, mixed.stderr
    assert "scored 3 of 5 inputs; 2 failed" in mixed.stderr and "notes.jpg" in mixed.stderr
    assert mixed.stderr.count("warning: 3 of 3 scores fall outside the model's score range "
                              "[0, 100] (kept as computed)") == 1
    rows = _read_csv(out_csv)
    assert [r["path"] for r in rows] == [b, c, a, bad["not_an_image"][0], bad["truncated"][0]]
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error"] * 2
    assert sorted(os.listdir(maps_dir)) == sorted(f"{s}.{e}" for s in "abc" for e in ("npy", "png"))

    # Another run, other order and batch neighbours, same batch size: identical scores.
    out_json = tmp_path / "scores.json"
    clean = run_score("--checkpoint", student_dir, "--output", str(out_json), "--batch_size=2",
                      str(photos), cache_dir=cache)
    assert clean.returncode == 0, clean.stderr
    again = {r["path"]: r for r in _read_json(out_json)}
    for row in rows[:3]:
        assert again[row["path"]]["score"] == float(row["score"])


def test_cpu_devices_split_a_students_batches_and_keep_its_scores(student_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _tree(photos)
    runs = {}
    for devices in ("1", "2"):
        out = tmp_path / f"devices{devices}.csv"
        completed = run_score("--checkpoint", student_dir, "--output", str(out),
                              "--batch_size=2", "--cpu_devices", devices, str(photos))
        assert completed.returncode == 0, completed.stderr
        runs[devices] = {r["path"]: float(r["score"]) for r in _read_csv(out)}
    assert runs["2"].keys() == runs["1"].keys() and len(runs["1"]) == 3
    # Another compiled program (as another batch size), printed to 6 significant digits.
    for path, score in runs["1"].items():
        assert runs["2"][path] == pytest.approx(score, rel=2e-5)
