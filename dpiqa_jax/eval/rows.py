"""The one output contract of scoring and evaluation: a row per image, written as it is known.

Columns `RESULT_COLUMNS` (path, score, raw, status, error, map_path), plus `mos` where the image
has a label (`LABELLED_COLUMNS`). `score` and `raw` carry 6 significant digits (the models agree
with their references to about that; more digits would only show float32 rounding); an error row
leaves them empty (CSV) or null (JSON). Rows are written and flushed one at a time, so a run that
stops keeps every row already scored; `close` finishes the JSON list.

File names that are not valid UTF-8 reach Python as strings with lone surrogates (the
`surrogateescape` convention of `os.fsdecode`): a CSV must be opened with
`errors="surrogateescape"` (`open_output` does), which writes the name's original bytes back; JSON
escapes them as `\\udcXX`, which Python's `json` and `os.fsencode` turn back into those bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

RESULT_COLUMNS = ("path", "score", "raw", "status", "error", "map_path")
LABELLED_COLUMNS = RESULT_COLUMNS + ("mos",)
OUTPUT_FORMATS = ("csv", "json")
SIGNIFICANT_DIGITS = 6
_NUMBER_COLUMNS = ("score", "raw", "mos")


def round_significant(value: float | None) -> float | None:
    """`value` rounded to `SIGNIFICANT_DIGITS` significant digits (None and non-finite kept)."""
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _csv_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in _NUMBER_COLUMNS:
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    return str(value)


def open_output(path: str) -> io.TextIOBase:
    """A text file for rows: UTF-8, undecodable file-name bytes written back as they were."""
    return open(path, "w", encoding="utf-8", errors="surrogateescape", newline="")


def output_format(output: str | None, fmt: str | None) -> str:
    """`fmt` if given, else from the output's extension (.json -> json), else csv."""
    if fmt:
        return fmt
    return "json" if output and output.lower().endswith(".json") else "csv"


class RowWriter:
    """Writes rows as CSV or as a JSON list, each row flushed as soon as it is written."""

    def __init__(self, stream: io.TextIOBase, fmt: str,
                 columns: Sequence[str] = RESULT_COLUMNS):
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self._stream, self._fmt, self._columns = stream, fmt, tuple(columns)
        self._count = 0
        if fmt == "csv":
            self._csv = csv.writer(stream, lineterminator="\n")
            self._csv.writerow(self._columns)
        else:
            stream.write("[")
        stream.flush()

    @property
    def count(self) -> int:
        return self._count

    def write(self, row: Mapping[str, Any]) -> None:
        if self._fmt == "csv":
            self._csv.writerow([_csv_cell(c, row.get(c)) for c in self._columns])
        else:
            values = {c: (round_significant(row.get(c)) if c in _NUMBER_COLUMNS else row.get(c))
                      for c in self._columns}
            self._stream.write(("," if self._count else "") + "\n " + json.dumps(values))
        self._count += 1
        self._stream.flush()

    def close(self) -> None:
        if self._fmt == "json":
            self._stream.write("\n]\n")
        self._stream.flush()
