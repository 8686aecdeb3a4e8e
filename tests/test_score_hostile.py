"""Hostile scoring inputs: nothing a folder can hold hangs, crashes or silently drops a run.

Every case is built in tmp_path (FIFO, link to /dev/zero, socket, symlink loop, dangling link,
oversized file, `-> .` directory links, a file name that is not UTF-8) and scored by the command
in a subprocess with a timeout, so a regression fails instead of hanging the suite. Each row is
checked exactly.
"""

import csv
import io
import json
import os
import socket
import subprocess
import sys

import pytest

from dpiqa_jax import score_files, scorer
from dpiqa_jax.eval import rows as rows_lib
from test_scorer import REPO_ROOT, random_image, save_image, student, student_dir  # noqa: F401

# Generous for a loaded CI machine; a hang (the failure mode tested) never ends.
SUBPROCESS_TIMEOUT_S = 240
NON_UTF8_NAME = b"caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
MAX_FILE_BYTES = 50_000  # above the test PNGs (about 11 kB)


def _run(*args, timeout=SUBPROCESS_TIMEOUT_S):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          timeout=timeout)


def _hostile_folder(root):
    """root/ with two good images and one of each hostile kind; returns (expected rows, socket)."""
    root.mkdir()
    good = [save_image(root / "a.png", random_image(0)), save_image(root / "b.png", random_image(1))]
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/dev/zero", root / "zero.png")
    os.symlink("loop.png", root / "loop.png")
    os.symlink("gone.png", root / "dangling.png")
    (root / "huge.png").write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(root / "sock.png"))
    non_utf8 = os.path.join(os.fsencode(root), NON_UTF8_NAME)
    with open(non_utf8, "wb") as f:
        f.write(open(good[0], "rb").read())
    r = str(root)
    expected = {
        f"{r}/a.png": ("ok", ""),
        f"{r}/b.png": ("ok", ""),
        os.fsdecode(non_utf8): ("ok", ""),
        f"{r}/dangling.png": ("error", f"{r}/dangling.png: broken symbolic link (its target does "
                                       f"not exist)"),
        f"{r}/fifo.jpg": ("error", f"{r}/fifo.jpg: a FIFO (named pipe), not a regular file; not "
                                   f"opened"),
        f"{r}/huge.png": ("error", f"{r}/huge.png: file is {MAX_FILE_BYTES + 1} bytes, larger "
                                   f"than the limit of {MAX_FILE_BYTES} (max_file_bytes)"),
        f"{r}/loop.png": ("error", f"{r}/loop.png: symbolic link loop"),
        f"{r}/sock.png": ("error", f"{r}/sock.png: a socket, not a regular file; not opened"),
        f"{r}/zero.png": ("error", f"{r}/zero.png: a character device, not a regular file; not "
                                   f"opened"),
    }
    return expected, server


def test_every_hostile_file_gets_its_exact_row_and_the_rest_are_scored(student_dir, tmp_path):
    expected, server = _hostile_folder(tmp_path / "photos")
    out = tmp_path / "scores.csv"
    with server:
        completed = _run("-m", "launch.score", "--noprogress", "--checkpoint", student_dir,
                         "--output", str(out), "--max_file_bytes", str(MAX_FILE_BYTES),
                         str(tmp_path / "photos"))
    assert completed.returncode == 1, completed.stderr.decode(errors="replace")
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
        got = {row["path"]: (row["status"], row["error"]) for row in csv.DictReader(f)}
    assert got == expected
    assert b"scored 3 of 9 inputs; 6 failed" in completed.stderr
    # The non-UTF-8 name went out as its own bytes, so it can be opened from the CSV again.
    assert os.path.join(os.fsencode(tmp_path / "photos"), NON_UTF8_NAME) in out.read_bytes()


def test_directory_links_to_themselves_are_listed_once_by_folders_and_globs(tmp_path):
    tree = tmp_path / "g"
    (tree / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        (tree / name).write_bytes(b"x")
    os.symlink(".", tree / "self1")
    os.symlink(".", tree / "sub" / "self2")
    os.symlink("..", tree / "sub" / "up")
    code = ("import json, sys; from dpiqa_jax import score_files; "
            "print(json.dumps(score_files.expand_inputs(sys.argv[1:])[0]))")
    completed = _run("-c", code, f"{tree}/**/*.png", str(tree), timeout=60)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    assert json.loads(completed.stdout) == [f"{tree}/a.png", f"{tree}/sub/b.png"]


def test_rows_scored_before_an_interrupt_stay_in_the_output(student, tmp_path, monkeypatch):
    paths = [save_image(tmp_path / f"{i}.png", random_image(i)) for i in range(3)]
    real = student.score_files

    def interrupted(*args, **kwargs):
        results = real(*args, **kwargs)
        yield next(results)
        yield next(results)
        raise KeyboardInterrupt

    monkeypatch.setattr(student, "score_files", interrupted)
    for fmt in rows_lib.OUTPUT_FORMATS:
        stream = io.StringIO()
        with pytest.raises(KeyboardInterrupt):
            score_files.score_to_output(student, paths, stream, fmt)
        text = stream.getvalue()
        written = (list(csv.DictReader(io.StringIO(text))) if fmt == "csv"
                   else json.loads(text))
        assert [r["path"] for r in written] == paths[:2], fmt
        assert all(r["status"] == "ok" for r in written), fmt


def test_a_non_regular_file_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe.png")
    opened = []
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a) or -1)
    with pytest.raises(scorer.InputError, match="a FIFO"):
        scorer.read_file(str(tmp_path / "pipe.png"))
    assert not opened
