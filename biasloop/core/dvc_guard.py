"""Atomic writes of DVC's own files (``dvc.lock``, ``params.yaml``), installed by ``.venv/bin/dvc``.

DVC 3.x writes ``dvc.lock`` in place: ``dvc.utils.serialize._common._dump_data`` opens the file with
mode ``"w+"`` (truncating it) and streams ruamel's output into it. Rewriting the default study's
43 kB lock (once per finished stage) took 1.4 s here, during which the file holds a prefix of the new
text. A ``dvc repro`` killed in that window (SIGTERM from ``timeout``, a closed terminal, a job
scheduler; SIGKILL; a power cut) leaves a truncated ``dvc.lock`` that still parses as YAML but fails
DVC's schema (``expected a dictionary, in stages -> label@1 -> deps -> 1``: the cut fell inside a
deps entry), and every later DVC command refuses to start. Killing a stage process itself cannot do
this: DVC writes the lock only between stages.

:func:`install` replaces that function with one that writes a temporary file beside the target,
fsyncs it and renames it over the target (``os.replace``), so an interrupted write leaves the
previous file whole. It is applied by the ``.venv/bin/dvc`` command that ``make venv`` writes (see
:mod:`biasloop.core.environment`); a ``dvc`` from elsewhere keeps DVC's in-place write.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

_PATCHED = "_biasloop_atomic"


def _is_local(fs: Any) -> bool:
    if fs is None:
        return True
    protocol = getattr(fs, "protocol", None)
    protocols = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    return any(p in ("local", "file") for p in protocols)


def install() -> bool:
    """Make DVC's serialised-file writes atomic in this process. Returns False when DVC's layout differs."""
    try:
        from dvc.utils.serialize import _common, _json, _py, _toml, _yaml
    except ImportError:
        return False
    original = getattr(_common, "_dump_data", None)
    if original is None:
        return False
    if getattr(original, _PATCHED, False):
        return True

    def atomic_dump_data(path: Any, data: Any, dumper: Any, fs: Any = None, **dumper_args: Any) -> Any:
        if not _is_local(fs):
            return original(path, data, dumper, fs=fs, **dumper_args)
        path = os.fspath(path)
        folder, name = os.path.split(os.path.abspath(path))
        descriptor, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                dumper(data, stream, **dumper_args)
                stream.flush()
                os.fsync(stream.fileno())
            if os.path.exists(path):
                os.chmod(partial, os.stat(path).st_mode & 0o7777)
            else:
                os.chmod(partial, 0o666 & ~_umask())
            os.replace(partial, path)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        return None

    setattr(atomic_dump_data, _PATCHED, True)
    for module in (_common, _yaml, _json, _toml, _py):  # each imported the function by name
        if getattr(module, "_dump_data", None) is original:
            module._dump_data = atomic_dump_data
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
