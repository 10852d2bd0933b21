"""K-class count files for ``biasloop amplify``: per-occupation counts of an attribute with any classes,
in wide form (``occupation,<class1>,<class2>,...[,abstain]``) or long form (``occupation,class,count``),
checked cell by cell; a bad file raises :class:`~biasloop.cli.count_files.CountFileError` naming the
file, the line, the column and the value. Binary files (``n_female``, ``n_male``) stay with
:func:`biasloop.cli.count_files.read_count_file`; :func:`count_file_form` tells them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biasloop.cli.count_files import _MAX_COUNT, _NON_NEGATIVE_INTEGER, CountFileError, _name_problem, _read_csv

BINARY_COLUMNS = ("n_female", "n_male")  # either one makes a file a binary count file
LONG_COLUMNS = ("occupation", "class", "count")
ABSTAIN_NAMES = ("abstain", "n_abstain")  # a wide column or a long-form class that counts abstentions


@dataclass(frozen=True)
class ClassCounts:
    """One K-class count file: ``counts[o, k]`` confident images of occupation ``occupations[o]`` in class
    ``classes[k]``, ``abstain[o]`` abstentions (int64 arrays)."""

    path: str
    form: str  # "wide" or "long"
    occupations: list[str]
    classes: list[str]
    counts: np.ndarray
    abstain: np.ndarray


def _header(path: Path, reader: Any) -> tuple[list[str], int]:
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)  # leading blank lines
    if header is None:
        raise CountFileError(
            f"{path}: empty file (expected a header: occupation,n_female,n_male[,n_abstain], "
            "occupation,<class>,<class>... or occupation,class,count)"
        )
    return [cell.strip() for cell in header], reader.line_num


def count_file_form(path: str | Path) -> str:
    """``"binary"`` (a column ``n_female`` or ``n_male``), ``"long"`` (columns ``class`` and ``count``)
    or ``"wide"`` (any other header), from the file's header; an unreadable file counts as binary, whose
    reader names the problem."""
    try:
        columns, _ = _read_csv(Path(path), _header)
    except CountFileError:
        return "binary"
    if any(name in columns for name in BINARY_COLUMNS):
        return "binary"
    return "long" if "class" in columns and "count" in columns else "wide"


def read_class_count_file(path: str | Path) -> ClassCounts:
    """Read and validate a K-class count file (wide or long form, :func:`count_file_form`).

    Wide: ``occupation`` and one column per class (every column but ``occupation`` and an optional
    ``abstain``/``n_abstain``), one row per occupation. Long: ``occupation,class,count`` (other columns
    ignored), one row per (occupation, class), a missing pair counting 0 and the class ``abstain`` counting
    abstentions. Classes are kept in the order they first appear.

    Raises:
        CountFileError: an unreadable or empty file, fewer than two classes, an empty or repeated column,
            occupation or (occupation, class), a count that is not a non-negative integer; the message
            names the file, the line and the column or value.
    """
    path = Path(path)
    parse = _parse_long if count_file_form(path) == "long" else _parse_wide
    return _read_csv(path, parse)


def _count(path: Path, line: int, column: str, text: str) -> int:
    if not _NON_NEGATIVE_INTEGER.fullmatch(text):
        raise CountFileError(f"{path}, line {line}: {column} must be a non-negative integer, found {text!r}")
    if int(text) > _MAX_COUNT:
        raise CountFileError(f"{path}, line {line}: {column} is too large ({text}; at most {_MAX_COUNT})")
    return int(text)


def _occupation(path: Path, line: int, text: str) -> str:
    if not text:
        raise CountFileError(f"{path}, line {line}: empty occupation")
    problem = _name_problem(text)
    if problem:
        raise CountFileError(f"{path}, line {line}: {problem}")
    return text


def _check_class_names(path: Path, line: int, classes: Sequence[str]) -> None:
    """A class name is shown in every table row's header: the occupation names' rules apply."""
    for name in classes:
        problem = _name_problem(name)
        if problem:
            raise CountFileError(f"{path}, line {line}: class {problem.replace('occupation ', '', 1)}")


def _check_header(path: Path, line: int, columns: list[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        raise CountFileError(
            f"{path}, line {line}: missing column(s) {', '.join(missing)} (header: {','.join(columns)})"
        )
    repeated = sorted({name for name in columns if name and columns.count(name) > 1})
    if repeated:
        raise CountFileError(f"{path}, line {line}: column(s) {', '.join(repeated)} appear more than once")


def _parse_wide(path: Path, reader: Any) -> ClassCounts:
    columns, header_line = _header(path, reader)
    _check_header(path, header_line, columns, ("occupation",))
    if "" in columns:
        raise CountFileError(f"{path}, line {header_line}: column {columns.index('') + 1} has no name")
    classes = [name for name in columns if name != "occupation" and name not in ABSTAIN_NAMES]
    abstain_columns = [name for name in ABSTAIN_NAMES if name in columns]
    if len(abstain_columns) > 1:
        raise CountFileError(
            f"{path}, line {header_line}: both {' and '.join(abstain_columns)}: give one abstain column"
        )
    abstain_column = abstain_columns[0] if abstain_columns else None
    _check_class_names(path, header_line, classes)
    if len(classes) < 2:
        raise CountFileError(
            f"{path}, line {header_line}: a K-class count file needs at least two class columns besides "
            f"occupation (header: {','.join(columns)}); a binary one has n_female,n_male"
        )
    occupations, rows, abstain, first_seen = [], [], [], {}
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: (record[i].strip() if i < len(record) else "") for i, name in enumerate(columns)}
        occupation = _occupation(path, line, cells["occupation"])
        if occupation in first_seen:
            raise CountFileError(
                f"{path}, line {line}: duplicate occupation {occupation!r} (first on line {first_seen[occupation]})"
            )
        first_seen[occupation] = line
        occupations.append(occupation)
        rows.append([_count(path, line, name, cells[name]) for name in classes])
        abstain.append(_count(path, line, abstain_column, cells[abstain_column] or "0") if abstain_column else 0)
    if not occupations:
        raise CountFileError(f"{path}: no occupation rows after the header")
    return ClassCounts(str(path), "wide", occupations, classes, np.array(rows, np.int64), np.array(abstain, np.int64))


def _parse_long(path: Path, reader: Any) -> ClassCounts:
    columns, header_line = _header(path, reader)
    _check_header(path, header_line, columns, LONG_COLUMNS)
    position = {name: columns.index(name) for name in LONG_COLUMNS}
    first_line: dict[tuple[str, str], int] = {}  # (occupation, class) -> its line
    values: dict[tuple[str, str], int] = {}
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: (record[i].strip() if i < len(record) else "") for name, i in position.items()}
        occupation = _occupation(path, line, cells["occupation"])
        if not cells["class"]:
            raise CountFileError(f"{path}, line {line}: empty class")
        _check_class_names(path, line, [cells["class"]])
        key = (occupation, "abstain" if cells["class"] in ABSTAIN_NAMES else cells["class"])
        if key in first_line:
            raise CountFileError(
                f"{path}, line {line}: duplicate row for occupation {occupation!r}, class {cells['class']!r}"
                f" (first on line {first_line[key]})"
            )
        first_line[key] = line
        values[key] = _count(path, line, "count", cells["count"])
    pairs = list(values)
    if not pairs:
        raise CountFileError(f"{path}: no rows after the header")
    occupations = list(dict.fromkeys(occupation for occupation, _ in pairs))
    classes = list(dict.fromkeys(name for _, name in pairs if name != "abstain"))
    if len(classes) < 2:
        raise CountFileError(f"{path}: a K-class count file needs at least two classes, found {classes}")
    counts = np.zeros((len(occupations), len(classes)), np.int64)
    abstain = np.zeros(len(occupations), np.int64)
    row, column = {o: i for i, o in enumerate(occupations)}, {c: j for j, c in enumerate(classes)}
    for occupation, name in pairs:
        value = values[(occupation, name)]
        if name == "abstain":
            abstain[row[occupation]] = value
        else:
            counts[row[occupation], column[name]] = value
    return ClassCounts(str(path), "long", occupations, classes, counts, abstain)


def aligned_classes(train: ClassCounts, gen: ClassCounts) -> ClassCounts:
    """``gen`` with its columns in ``train``'s class order.

    Raises:
        CountFileError: the two files do not name the same classes; the message lists the classes of
            each file and those of one file only.
    """
    if set(train.classes) != set(gen.classes):
        only_train = [c for c in train.classes if c not in gen.classes]
        only_gen = [c for c in gen.classes if c not in train.classes]
        hint = (
            " (long form: a class with no image needs a row with count 0)" if "long" in (train.form, gen.form) else ""
        )
        raise CountFileError(
            f"the two files name different classes: {train.path} has {train.classes}, {gen.path} has "
            f"{gen.classes}; only in {train.path}: {only_train}, only in {gen.path}: {only_gen}{hint}"
        )
    order = [gen.classes.index(name) for name in train.classes]
    return ClassCounts(gen.path, gen.form, gen.occupations, list(train.classes), gen.counts[:, order], gen.abstain)
