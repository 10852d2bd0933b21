"""Loading model files from disk safely, with one-line errors that name the file.

Model folders may come from elsewhere (a colleague, a hub mirror, a download), so nothing here
unpickles arbitrary objects or runs code from a model folder:

- ``.pt`` state dicts go through ``torch.load(..., weights_only=True)``, which refuses any pickle that
  builds something other than tensors and plain containers (a malicious ``__reduce__`` is rejected
  before it runs);
- diffusers / transformers / sentence-transformers folders are loaded with ``use_safetensors=True``
  (never a ``.bin`` pickle) and ``trust_remote_code=False``; open_clip checkpoints with
  ``weights_only=True``.

A missing file raises ``FileNotFoundError``, any other failure (truncated, foreign, unsafe or
mismatched file) :class:`ModelFileError` (a ``ValueError``); a stage turns both into exit status 2 and
a one-line message that names the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, unsafe or does not fit the model; names the file."""


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_manifest(path: str | Path, what: str) -> dict[str, Any]:
    """Read a model folder's JSON manifest.

    Args:
        path: the manifest file (``instrument.json``, ``generator.json``, ...).
        what: what the folder should hold, for the message (``"an instrument folder"``).

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: not JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found, so {path.parent} is not {what}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a readable JSON manifest ({_one_line(exc)})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: not a readable JSON manifest (nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    return manifest


def manifest_field(manifest: dict[str, Any], key: str, path: str | Path) -> Any:
    """``manifest[key]``, or :class:`ModelFileError` naming the manifest and the missing key."""
    if key not in manifest:
        raise ModelFileError(f"{path}: missing key {key!r}")
    return manifest[key]


def load_state_dict_file(path: str | Path, device: Any = "cpu") -> dict[str, Any]:
    """Load a tensor state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling objects.

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: truncated, not a weights file, or holding anything but tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(device))
        else:
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, SafetensorError, EOFError, ...
        raise ModelFileError(f"{path}: not a readable weights file ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def load_weights_into(module: Any, state: dict[str, Any], path: str | Path) -> None:
    """``module.load_state_dict(state)`` (strict), with a one-line error naming ``path`` when they differ."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]!r})")
        raise ModelFileError(f"{path}: weights do not fit the model: {', '.join(parts)}")
    module.load_state_dict(state)


def from_pretrained_safely(cls: Any, folder: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, use_safetensors=True, **kwargs)`` with a one-line error naming the folder.

    For diffusers models and schedulers (a scheduler takes no ``use_safetensors``; pass
    ``use_safetensors=None`` to leave it out).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    options = {"use_safetensors": True, **kwargs}
    if options["use_safetensors"] is None:
        del options["use_safetensors"]
    try:
        return cls.from_pretrained(folder, **options)
    except Exception as exc:  # noqa: BLE001 - OSError, EnvironmentError, SafetensorError, ValueError, ...
        raise ModelFileError(f"{folder}: cannot load {cls.__name__} ({type(exc).__name__}: {_one_line(exc)})") from None
