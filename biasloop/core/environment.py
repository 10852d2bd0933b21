"""The per-checkout environment: ``.venv`` in the repository root, an overlay on the shared one.

The pinned packages (about 6 GB) are installed once into a shared environment,
``~/.cache/biasloop/venv-<hash of requirements.lock>``, which holds **no** ``biasloop``. Every
checkout gets its own small ``.venv`` (a few MB, made in seconds by ``make venv``):

- a virtual environment on the same Python, with no packages of its own except
- ``_biasloop_shared.pth``, which puts the shared environment's ``site-packages`` on ``sys.path``
  (and runs its ``.pth`` files, except an editable install of biasloop left there by an older
  ``make env``), after this environment's own ``site-packages``;
- this checkout installed in editable mode (``pip install -e .``), so ``biasloop`` and ``stages``
  are this checkout's code whatever other clones exist;
- a copy of every command of the shared environment (``dvc``, ``mlflow``, ``pytest``, ``pip``, ...)
  run by ``.venv/bin/python``, which also puts ``.venv/bin`` first on ``PATH``: the ``python`` in a
  stage ``cmd`` of ``.venv/bin/dvc repro`` is this checkout's, activated or not. ``dvc`` also writes
  ``dvc.lock`` atomically (:mod:`biasloop.core.dvc_guard`).

Run with the shared environment's Python from the repository root::

    ~/.cache/biasloop/venv-<hash>/bin/python -m biasloop.core.environment --venv .venv
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import venv
from pathlib import Path

SHARED_MARKER = "biasloop-shared-env"  # file in .venv naming the shared environment's prefix
PTH_NAME = "_biasloop_shared.pth"
PTH_MODULE = "_biasloop_shared"


def site_packages(prefix: Path) -> Path:
    """``<prefix>/lib/pythonX.Y/site-packages`` for this interpreter's version (POSIX layout)."""
    return Path(prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def shared_environment(prefix: str | Path | None = None) -> Path:
    """The shared environment behind the environment at ``prefix`` (default: the running one).

    A checkout's ``.venv`` names it in ``.venv/biasloop-shared-env``; any other environment is its own.
    """
    prefix = Path(prefix or sys.prefix)
    marker = prefix / SHARED_MARKER
    return Path(marker.read_text().strip()) if marker.is_file() else prefix


_LOADER = '''"""Written by biasloop.core.environment: the shared environment's packages, after this one's."""
import os
import site
import sys

SHARED = {shared!r}


def _load():
    if not os.path.isdir(SHARED) or SHARED in sys.path:
        return
    sys.path.append(SHARED)
    known = {{os.path.normcase(p) for p in sys.path}}
    for name in sorted(os.listdir(SHARED)):
        # An editable biasloop in the shared environment (older `make env`) points at some other clone.
        if name.endswith(".pth") and not (name.startswith("__editable__") and "biasloop" in name):
            site.addpackage(SHARED, name, known)


_load()
'''


GUARD = """try:  # dvc.lock written atomically: an interrupted dvc repro cannot truncate it
    from biasloop.core.dvc_guard import install as _install_guard
    _install_guard()
except ImportError:
    pass
"""


def _write_commands(shared: Path, target: Path) -> list[str]:
    """Copy the shared environment's console scripts into ``target/bin``, run by target's python."""
    shared_bin, bin_dir = shared / "bin", target / "bin"
    python = bin_dir / "python"
    shared_pythons = {f"#!{shared_bin / name}" for name in ("python", "python3", f"python3.{sys.version_info.minor}")}
    written = []
    for script in sorted(shared_bin.iterdir()):
        destination = bin_dir / script.name
        if destination.exists() or destination.is_symlink() or not script.is_file():
            continue  # the editable install's own `biasloop`, python, activate, ...
        try:
            first, _, body = script.read_text().partition("\n")
        except (UnicodeDecodeError, OSError):
            continue
        if first.strip() not in shared_pythons:
            continue
        guard = GUARD if script.name == "dvc" else ""
        destination.write_text(
            f"#!{python}\n"
            f"import os; os.environ['PATH'] = {str(bin_dir)!r} + os.pathsep + os.environ.get('PATH', '')\n"
            + guard
            + body
        )
        destination.chmod(0o755)
        written.append(script.name)
    return written


def create(target: Path, shared: Path, checkout: Path) -> None:
    """Make ``target`` (``.venv``): an overlay on ``shared`` with ``checkout`` installed editable in it.

    Nothing is written into ``shared``. Raises ``RuntimeError`` with pip's output when the editable
    install fails.
    """
    target, shared, checkout = Path(target).absolute(), Path(shared).resolve(), Path(checkout).resolve()
    if not (shared / "bin" / "python").exists():
        raise FileNotFoundError(f"{shared}: no Python environment there (run `make env`)")
    if target.exists():
        shutil.rmtree(target)
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(target)
    own = site_packages(target)
    (own / f"{PTH_MODULE}.py").write_text(_LOADER.format(shared=str(site_packages(shared))))
    (own / PTH_NAME).write_text(f"import {PTH_MODULE}\n")
    (target / SHARED_MARKER).write_text(f"{shared}\n")
    install = subprocess.run(
        [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--no-warn-conflicts",
            "-e",
            str(checkout),
        ],
        capture_output=True,
        text=True,
        cwd=target,
    )
    if install.returncode != 0:
        raise RuntimeError(f"pip install -e {checkout} into {target} failed:\n{install.stdout}{install.stderr}")
    commands = _write_commands(shared, target)
    print(f"{target}: this checkout ({checkout}) over {shared}; {len(commands)} commands in {target / 'bin'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m biasloop.core.environment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--venv", default=".venv", help="where to make the checkout's environment (default: %(default)s)"
    )
    parser.add_argument("--shared", default=None, help="the shared environment (default: the one running this)")
    parser.add_argument("--checkout", default=".", help="the checkout to install editable (default: %(default)s)")
    args = parser.parse_args(argv)
    shared = Path(args.shared) if args.shared else shared_environment()
    try:
        create(Path(args.venv), shared, Path(args.checkout))
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
