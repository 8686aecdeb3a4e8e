"""A scoring run over files, as `python -m launch.score` does it: inputs -> rows and map files.

* `expand_inputs`: command-line arguments (files, folders, globs, `@list.txt`) -> paths, each once,
  never entering links to directories (no loops, no duplicates), plus error rows for arguments that
  expand to nothing;
* `score_to_output`: scores the paths with a `Scorer`, writing each row (`dpiqa_jax.eval.rows`)
  and its quality-map files as it goes, and returns a `RunSummary` (counts, failures, scores
  outside the model's range).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from dpiqa_jax import heatmap
from dpiqa_jax.eval import rows as rows_lib
from dpiqa_jax.scorer import FileResult, InputError, Scorer, read_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif",
                    ".jpe", ".ppm", ".pgm", ".pbm", ".pnm")


# --------------------------------------------------------------------------- command-line inputs


def _is_glob(argument: str) -> bool:
    return any(ch in argument for ch in "*?[")


def _has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_dirs(root: str) -> Iterator[str]:
    """`root` and every directory below it, sorted, never entering a symbolic link to a directory
    (so links like `-> .` cannot make the walk endless or list a file twice)."""
    for parent, dirs, _ in os.walk(root, followlinks=False):
        dirs.sort()
        yield parent


def _images_under(directory: str) -> list[str]:
    found = []
    for parent in _walk_dirs(directory):
        found.extend(os.path.join(parent, entry.name)
                     for entry in sorted(_scandir(parent), key=lambda e: e.name)
                     if _has_image_extension(entry.name) and not _is_dir(entry))
    return found


def _scandir(directory: str) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop: a file-like entry that will get its own error row
        return False


def _dirs_below(parent: str) -> Iterator[str]:
    """`parent` and the directories below it, spelled from `parent` ("" is the current one)."""
    root = parent or "."
    for directory in _walk_dirs(root):
        relative = os.path.relpath(directory, root)
        yield parent if relative == "." else os.path.join(parent, relative)


def _match_component(parents: Iterable[str], pattern: str) -> Iterator[str]:
    hidden_ok = pattern.startswith(".")
    for parent in parents:
        for entry in sorted(_scandir(parent or "."), key=lambda e: e.name):
            if (hidden_ok or not entry.name.startswith(".")) and fnmatch.fnmatchcase(
                    entry.name, pattern):
                yield os.path.join(parent, entry.name)


def expand_glob(pattern: str) -> list[str]:
    """Paths matching a glob (`*`, `?`, `[...]`; a `**` component: this and every directory
    below), sorted per directory, each once; directories themselves are not returned.

    Unlike `glob.glob`, `**` does not enter symbolic links to directories, so a link loop cannot
    make it endless, and non-directories (FIFOs, devices) are returned so they get an error row.
    """
    absolute = pattern.startswith(os.sep)
    parts = [p for p in pattern.split(os.sep) if p]
    current: list[str] = [os.sep if absolute else ""]
    for part in parts:
        if part == "**":
            current = [d for parent in current for d in _dirs_below(parent)]
        elif _is_glob(part):
            current = list(_match_component(current, part))
        else:
            current = [os.path.join(parent, part) for parent in current
                       if os.path.lexists(os.path.join(parent, part))]
    return [path for path in dict.fromkeys(current) if path and not os.path.isdir(path)]


def _list_file_entries(argument: str) -> list[str]:
    """Paths listed in `@list.txt` (one per line; blank lines and `#` comments skipped)."""
    list_path = argument[1:]
    try:
        data = read_file(list_path)
        lines = [line.strip() for line in data.decode("utf-8", "surrogateescape").splitlines()]
    except InputError as err:
        raise InputError(f"{argument}: cannot read the list file ({err})") from err
    base = os.path.dirname(list_path)
    return [line if os.path.isabs(line) else os.path.join(base, line)
            for line in lines if line and not line.startswith("#")]


def expand_inputs(arguments: Sequence[str]) -> tuple[list[str], list[FileResult]]:
    """Command-line inputs -> (image paths in order, each once; results for inputs that failed).

    * a directory: its image files (`IMAGE_EXTENSIONS`, any case), recursively, sorted, not
      entering links to directories;
    * a glob (`*`, `?`, `[`; `**` recurses, not entering links to directories): its matches, sorted;
    * `@list.txt`: the paths listed in it, one per line (blank lines and `#` comments skipped;
      relative paths are relative to the list file; a directory listed there is an input error,
      not expanded);
    * anything else: a file path (a missing one becomes an error row when scored).

    A directory without images, a glob matching no file and an unreadable list file come back as
    error results, so they are reported rather than silently dropped.
    """
    paths: list[str] = []
    failed: list[FileResult] = []
    for argument in arguments:
        if argument.startswith("@") and len(argument) > 1:
            try:
                paths.extend(_list_file_entries(argument))
            except InputError as err:
                failed.append(FileResult(path=argument, error=str(err)))
        elif os.path.isdir(argument):
            found = _images_under(argument)
            paths.extend(found)
            if not found:
                failed.append(FileResult(path=argument, error=(
                    f"{argument}: directory holds no image files ({', '.join(IMAGE_EXTENSIONS)})")))
        elif _is_glob(argument) and not os.path.lexists(argument):
            matches = expand_glob(argument)
            paths.extend(matches)
            if not matches:
                failed.append(FileResult(path=argument,
                                         error=f"{argument}: pattern matches no file"))
        else:
            paths.append(argument)
    return list(dict.fromkeys(paths)), failed


# --------------------------------------------------------------------------- writing results


def map_stems(paths: Sequence[str]) -> dict[str, str]:
    """Path -> file stem for its quality-map files, unique over `paths`.

    A stem used by one path only is kept (`photos/a.jpg` -> `a`). Paths sharing a stem (`x/a.jpg`,
    `y/a.png`) all get `<stem>-<first 8 hex digits of sha1(absolute path)>`, so the name depends on
    the path alone, not on the input order or the other inputs' order.
    """
    stems = {path: os.path.splitext(os.path.basename(path))[0] or "image" for path in paths}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {path: stem if counts[stem] == 1 else
            f"{stem}-{hashlib.sha1(os.fsencode(os.path.abspath(path))).hexdigest()[:8]}"
            for path, stem in stems.items()}


def save_map_files(directory: str, stem: str, result: FileResult) -> str:
    """Writes `<stem>.npy` (the quality map, float32 [h, w, C], channel-last as every output of
    this project) and `<stem>.png` (its heatmap over the model input); returns the .npy path."""
    quality_map = np.ascontiguousarray(result.quality_map, np.float32)
    npy_path = os.path.join(directory, stem + ".npy")
    np.save(npy_path, quality_map)
    heatmap.save_overlay(os.path.join(directory, stem + ".png"), result.model_input, quality_map)
    return npy_path


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Counts of a scoring run, (path, reason) of every failed input, and how many scores fell
    outside the model's score range."""

    scored: int
    failures: tuple[tuple[str, str], ...]
    out_of_range: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total(self) -> int:
        return self.scored + self.failed


def score_to_output(scorer: Scorer, paths: Sequence[str], stream: io.TextIOBase, fmt: str, *,
                    failed_inputs: Sequence[FileResult] = (), maps_dir: str | None = None,
                    progress: bool = False) -> RunSummary:
    """Scores `paths`, writing one row per path to `stream` (and map files to `maps_dir`).

    `failed_inputs` (from `expand_inputs`) are written first, then the paths in order. Every row
    is flushed as it is written; if the run stops (an exception, Ctrl-C) the rows so far stay and
    a JSON list is closed.
    """
    if maps_dir:
        os.makedirs(maps_dir, exist_ok=True)
    stems = map_stems(paths) if maps_dir else {}
    writer = rows_lib.RowWriter(stream, fmt)
    scored, failures, outside = 0, [], 0
    results = scorer.score_files(paths, return_maps=bool(maps_dir), progress=progress)
    try:
        for result in itertools.chain(failed_inputs, results):
            if result.ok:
                scored += 1
                outside += scorer.scale.count_outside(np.array([result.score]))
                if maps_dir:
                    result = dataclasses.replace(result, map_path=save_map_files(
                        maps_dir, stems[result.path], result))
            else:
                failures.append((result.path, result.error))
            writer.write(result.row())
    finally:
        writer.close()
    return RunSummary(scored, tuple(failures), outside)
