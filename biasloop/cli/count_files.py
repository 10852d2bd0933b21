"""The files ``biasloop amplify`` reads: count files (``occupation, n_female, n_male[, n_abstain]``, CSV or
parquet) and pair files (``occupation, train_label, gen_label``), checked cell by cell; a bad file
raises :class:`CountFileError` naming the file, the line and the problem."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl


class CountFileError(ValueError):
    """A bad count file; the message names the file, the line and the problem."""


REQUIRED_COLUMNS = ("occupation", "n_female", "n_male")
COUNT_COLUMNS = ("n_female", "n_male", "n_abstain")
_NON_NEGATIVE_INTEGER = re.compile(r"[0-9]+")
MAX_NAME_CHARS = 200  # an occupation name longer than this is not one (and would widen every table row)
# Characters that reorder how the rest of a line is displayed ("Trojan Source"): a table row could show
# one occupation's numbers beside another's name.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _name_problem(occupation: str) -> str | None:
    """Why ``occupation`` cannot be an occupation name (a control or bidirectional-override character, or
    too long), or None."""
    if any(unicodedata.category(ch) == "Cc" for ch in occupation):
        return f"occupation contains a control character ({occupation!r})"
    bidi = sorted({f"U+{ord(ch):04X}" for ch in occupation if ch in _BIDI_CONTROLS})
    if bidi:
        return f"occupation contains a bidirectional control character ({', '.join(bidi)}; {occupation!r})"
    if len(occupation) > MAX_NAME_CHARS:
        return f"occupation is {len(occupation)} characters long (at most {MAX_NAME_CHARS}; starts {occupation[:40]!r})"
    return None


def _repeated_columns(columns: list[str], wanted: Sequence[str]) -> list[str]:
    return [name for name in wanted if columns.count(name) > 1]


_MAX_COUNT = 2**63 - 1  # counts are Int64


def read_count_file(path: str | Path) -> pl.DataFrame:
    """Read and validate a count CSV into ``occupation, n_female, n_male, n_abstain`` (Int64 counts).

    Args:
        path: a CSV with a header ``occupation,n_female,n_male[,n_abstain]`` (other columns are
            ignored) and one row per occupation; a missing or empty ``n_abstain`` reads as 0.

    Raises:
        CountFileError: an unreadable, missing or empty file, a missing column, a count that is not a
            non-negative integer, an empty or duplicate occupation; the message names the file and,
            where there is one, the line.
    """
    return _read_csv(Path(path), _parse_counts)


def _read_csv(path: Path, parse: Any) -> pl.DataFrame:
    """``parse(path, csv.reader)`` on a CSV file; an unreadable file is a CountFileError naming it."""
    try:
        # utf-8-sig: spreadsheets often write a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return parse(path, csv.reader(handle))
    except FileNotFoundError:
        raise CountFileError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise CountFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise CountFileError(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise CountFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse_counts(path: Path, reader: Any) -> pl.DataFrame:
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)  # leading blank lines
    if header is None:
        raise CountFileError(f"{path}: empty file (expected a header: occupation,n_female,n_male[,n_abstain])")
    header_line = reader.line_num
    columns = [cell.strip() for cell in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise CountFileError(
            f"{path}, line {header_line}: missing column(s) {', '.join(missing)} (header: {','.join(columns)})"
        )
    repeated = _repeated_columns(columns, (*REQUIRED_COLUMNS, "n_abstain"))
    if repeated:
        raise CountFileError(
            f"{path}, line {header_line}: column(s) {', '.join(repeated)} appear more than once "
            f"(header: {','.join(columns)})"
        )
    position = {name: columns.index(name) for name in (*REQUIRED_COLUMNS, "n_abstain") if name in columns}
    rows: dict[str, list] = {"occupation": [], **{column: [] for column in COUNT_COLUMNS}}
    first_seen: dict[str, int] = {}
    for record in reader:
        # line_num counts physical lines read so far, so it stays right past blank lines and quoted
        # newlines (for a record spanning lines it names the last one).
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: (record[i].strip() if i < len(record) else "") for name, i in position.items()}
        occupation = cells["occupation"]
        if not occupation:
            raise CountFileError(f"{path}, line {line}: empty occupation")
        problem = _name_problem(occupation)
        if problem:
            raise CountFileError(f"{path}, line {line}: {problem}")
        if occupation in first_seen:
            raise CountFileError(
                f"{path}, line {line}: duplicate occupation {occupation!r} (first on line {first_seen[occupation]})"
            )
        first_seen[occupation] = line
        rows["occupation"].append(occupation)
        for column in COUNT_COLUMNS:
            text = cells.get(column, "")
            if column == "n_abstain" and text == "":
                text = "0"
            if not _NON_NEGATIVE_INTEGER.fullmatch(text):
                raise CountFileError(f"{path}, line {line}: {column} must be a non-negative integer, found {text!r}")
            if int(text) > _MAX_COUNT:
                raise CountFileError(f"{path}, line {line}: {column} is too large ({text}; at most {_MAX_COUNT})")
            rows[column].append(int(text))
    if not rows["occupation"]:
        raise CountFileError(f"{path}: no occupation rows after the header")
    return pl.DataFrame(rows, schema={"occupation": pl.String, **{column: pl.Int64 for column in COUNT_COLUMNS}})


PAIR_COLUMNS = ("occupation", "train_label", "gen_label")
PAIR_LABELS = ("female", "male", "abstain")


def read_pair_file(path: str | Path) -> pl.DataFrame:
    """Read and validate a pair CSV into ``occupation, train_label, gen_label`` (strings).

    Args:
        path: a CSV with a header naming ``occupation``, ``train_label`` and ``gen_label`` (other columns
            are ignored), one row per pair; labels ``female``/``male``/``abstain``.

    Raises:
        CountFileError: an unreadable, missing or empty file, a missing column, an empty occupation or
            a label outside the three; the message names the file, the line, the column and the value.
    """
    return _read_csv(Path(path), _parse_pairs)


def _parse_pairs(path: Path, reader: Any) -> pl.DataFrame:
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)
    if header is None:
        raise CountFileError(f"{path}: empty file (expected a header: {','.join(PAIR_COLUMNS)})")
    columns = [cell.strip() for cell in header]
    missing = [c for c in PAIR_COLUMNS if c not in columns]
    if missing:
        raise CountFileError(
            f"{path}, line {reader.line_num}: missing column(s) {', '.join(missing)} (header: {','.join(columns)})"
        )
    repeated = _repeated_columns(columns, PAIR_COLUMNS)
    if repeated:
        raise CountFileError(
            f"{path}, line {reader.line_num}: column(s) {', '.join(repeated)} appear more than once "
            f"(header: {','.join(columns)})"
        )
    position = {name: columns.index(name) for name in PAIR_COLUMNS}
    rows: dict[str, list[str]] = {name: [] for name in PAIR_COLUMNS}
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: (record[i].strip() if i < len(record) else "") for name, i in position.items()}
        if not cells["occupation"]:
            raise CountFileError(f"{path}, line {line}: empty occupation")
        occupation = cells["occupation"]
        problem = _name_problem(occupation)
        if problem:
            raise CountFileError(f"{path}, line {line}: {problem}")
        for column in ("train_label", "gen_label"):
            if cells[column] not in PAIR_LABELS:
                raise CountFileError(
                    f"{path}, line {line}: {column} must be one of {', '.join(PAIR_LABELS)}, found {cells[column]!r}"
                )
        for name in PAIR_COLUMNS:
            rows[name].append(cells[name])
    if not rows["occupation"]:
        raise CountFileError(f"{path}: no pair rows after the header")
    return pl.DataFrame(rows, schema={name: pl.String for name in PAIR_COLUMNS})
