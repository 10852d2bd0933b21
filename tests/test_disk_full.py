"""A full disk: one line naming the output and saying the disk is full, exit status 1, nothing partial left.

numpy, polars and Python report a full disk three ways (``OSError: 3145728 requested and 589696 written``
without errno; ``ComputeError: ... No space left on device (os error 28)``; ``OSError(ENOSPC)``). The
in-process tests make the writers fail that way deterministically (the fake writes part of the file
first, as a real full disk does); the last test runs the corpus and generate stages on a real 8 KiB tmpfs
mounted in a private user and mount namespace (skipped, with the reason, where that is not permitted).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.io import DiskFullError, atomic_path, describe_disk_full, disk_full_error, write_image_shards
from tests.test_stage_generate import (
    ARGS as GENERATE_ARGS,
    workspace,  # noqa: F401 (a fixture)
)

REPO_ROOT = Path(__file__).resolve().parents[1]
Usage = namedtuple("Usage", "total used free")
FREE = 589_696  # what the fake disk has left


@pytest.fixture()
def nearly_full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * 2**20, 10 * 2**20 - FREE, FREE))


def _numpy_runs_out_of_space(monkeypatch: pytest.MonkeyPatch) -> None:
    def save(file, array, allow_pickle=True, fix_imports=True):
        Path(file).write_bytes(b"\x93NUMPY" + b"\0" * 1000)  # part of the file, as a short write leaves it
        raise OSError(f"{np.asarray(array).nbytes + 3_000_000} requested and {FREE} written")

    monkeypatch.setattr(np, "save", save)


def _polars_runs_out_of_space(monkeypatch: pytest.MonkeyPatch) -> None:
    def write_parquet(self, file, *args, **kwargs):
        Path(file).write_bytes(b"PAR1" + b"\0" * 100)
        raise pl.exceptions.ComputeError(
            "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------ classification


def test_each_way_of_saying_disk_full_is_recognised(tmp_path: Path, nearly_full_disk) -> None:
    out = tmp_path / "out.parquet"
    numpy = disk_full_error(OSError("3145728 requested and 589696 written"), out)
    assert isinstance(numpy, DiskFullError) and numpy.errno == errno.ENOSPC and numpy.needed_bytes == 3145728
    assert str(numpy).startswith(
        f"disk full (ENOSPC): could not write {out} (575.9 KiB (589,696 bytes) free, "
        "one write needed 3.0 MiB (3,145,728 bytes))"
    )
    polars = disk_full_error(
        pl.exceptions.ComputeError("underlying IO error: No space left on device (os error 28)"), out
    )
    assert isinstance(polars, DiskFullError) and polars.free_bytes == FREE
    python = disk_full_error(OSError(errno.ENOSPC, "No space left on device"), out)
    assert isinstance(python, DiskFullError)
    quota = disk_full_error(OSError(errno.EDQUOT, "Disk quota exceeded"), out)
    assert "disk full (EDQUOT)" in str(quota)


def test_other_errors_are_not_called_a_full_disk(tmp_path: Path, nearly_full_disk) -> None:
    out = tmp_path / "out.npy"
    assert disk_full_error(OSError(errno.EIO, "Input/output error"), out) is None
    assert disk_full_error(ValueError("bad value"), out) is None
    assert disk_full_error(PermissionError(errno.EACCES, "Permission denied"), out) is None
    # a short write while the space was there is an I/O problem, not a full disk
    assert disk_full_error(OSError("100 requested and 10 written"), out) is None
    assert describe_disk_full(OSError(errno.ENOSPC, "No space left on device", "/data/x.npy")).startswith(
        "disk full (ENOSPC): could not write /data/x.npy"
    )


def test_image_shards_on_a_full_disk_leave_nothing(tmp_path: Path, nearly_full_disk, monkeypatch) -> None:
    _numpy_runs_out_of_space(monkeypatch)
    final = tmp_path / "gen0" / "images"
    with pytest.raises(DiskFullError, match=r"could not write .*gen0/images") as caught:
        with atomic_path(final) as tmp:
            write_image_shards(np.zeros((4, 8, 8, 3), np.uint8), tmp, shard_size=2)
    assert caught.value.path == final
    assert _leftovers(tmp_path / "gen0") == []  # neither the folder nor its temporary sibling


def test_parquet_on_a_full_disk_leaves_nothing(tmp_path: Path, nearly_full_disk, monkeypatch) -> None:
    from biasloop.core.io import write_parquet

    (tmp_path / "status.parquet").write_bytes(b"the previous, complete output")
    _polars_runs_out_of_space(monkeypatch)
    with pytest.raises(DiskFullError, match="status.parquet"):
        write_parquet(tmp_path / "status.parquet", pl.DataFrame({"x": [1, 2]}))
    assert _leftovers(tmp_path) == ["status.parquet"]
    assert (tmp_path / "status.parquet").read_bytes() == b"the previous, complete output"  # left as it was


# ------------------------------------------------------------------------------- stages, in-process


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_corpus_stage_on_a_full_disk(tmp_path: Path, tiny_params: Path, nearly_full_disk, monkeypatch, capsys) -> None:
    from stages.corpus import main

    monkeypatch.chdir(tmp_path)
    _numpy_runs_out_of_space(monkeypatch)
    status = main(
        [
            "--params",
            str(tiny_params),
            "--out",
            "artifacts/corpus",
            "--metrics",
            "metrics/corpus.json",
            "--contact-sheet",
            "plots/sheet.png",
        ]
    )
    assert status == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "disk full (ENOSPC): could not write artifacts/corpus" in line and "575.9 KiB" in line
    assert _leftovers(tmp_path / "artifacts") == []
    assert not Path("metrics/corpus.json").exists()


def test_generate_stage_on_a_full_disk(workspace: Path, nearly_full_disk, monkeypatch, capsys) -> None:  # noqa: F811
    from stages.generate import main

    _polars_runs_out_of_space(monkeypatch)  # the images fit; the manifest does not
    assert main(GENERATE_ARGS) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "disk full (ENOSPC): could not write artifacts/gen0/generate" in line
    assert _leftovers(workspace / "artifacts/gen0") == []


# ----------------------------------------------------------------------------- a real, tiny tmpfs


def _in_tiny_filesystem(workdir: Path, mountpoint: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` in ``workdir`` with an 8 KiB tmpfs on ``mountpoint``, in a private user and mount
    namespace (nothing is mounted for anyone else; the mount goes away with the process); then list
    what is left on the tmpfs."""
    script = 'mount -t tmpfs -o size=8k tmpfs "$0" || exit 97; "$@"; echo "exit=$?"; ls -A "$0"'
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(mountpoint), *command],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _skip_without_namespaces(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=8k",
            "tmpfs",
            str(probe),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {result.stderr.strip()[:200]}")


@pytest.mark.slow  # a stage process: 10 to 30 s on a shared 2-core machine
def test_corpus_stage_on_a_real_full_filesystem(tmp_path: Path, tiny_params: Path) -> None:
    """The corpus stage (numpy image shards, parquet captions) with artifacts/ on an 8 KiB tmpfs."""
    _skip_without_namespaces(tmp_path)
    params = yaml.safe_load(tiny_params.read_text())
    params["tracking"]["enabled"] = False
    tiny_params.write_text(yaml.safe_dump(params))
    (tmp_path / "artifacts").mkdir()
    corpus = _in_tiny_filesystem(
        tmp_path,
        tmp_path / "artifacts",
        [
            sys.executable,
            "-m",
            "stages.corpus",
            "--params",
            str(tiny_params),
            "--out",
            "artifacts/corpus",
            "--metrics",
            "metrics/corpus.json",
            "--contact-sheet",
            "plots/sheet.png",
        ],
    )
    assert "exit=1" in corpus.stdout, corpus.stdout + corpus.stderr
    line = _one_error_line(corpus.stderr)
    assert "disk full (ENOSPC): could not write artifacts/corpus" in line, line
    assert corpus.stdout.strip().endswith("exit=1")  # `ls -A` printed nothing: no partial output, no temporary folder
    assert not (tmp_path / "metrics/corpus.json").exists()


@pytest.mark.slow  # a stage process: 10 to 30 s on a shared 2-core machine
def test_generate_stage_on_a_real_full_filesystem(workspace: Path) -> None:  # noqa: F811
    """The generate stage (image shards, manifest) with artifacts/gen0 on an 8 KiB tmpfs."""
    _skip_without_namespaces(workspace)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    (workspace / "artifacts/gen0").mkdir(parents=True)
    generate = _in_tiny_filesystem(
        workspace, workspace / "artifacts/gen0", [sys.executable, "-m", "stages.generate", *GENERATE_ARGS]
    )
    assert "exit=1" in generate.stdout, generate.stdout + generate.stderr
    line = _one_error_line(generate.stderr)
    assert "disk full (ENOSPC): could not write artifacts/gen0/generate" in line, line
    assert generate.stdout.strip().endswith("exit=1")


def test_biasloop_command_on_a_full_disk(monkeypatch, capsys) -> None:
    """`biasloop study collect`, `biasloop amplify`, ...: the same one line and status 1."""
    import argparse

    import biasloop.cli as cli

    def run(args):
        raise OSError(errno.ENOSPC, "No space left on device", "study/results.csv")

    parser = argparse.ArgumentParser()
    parser.set_defaults(run=run)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: disk full (ENOSPC): could not write study/results.csv")
