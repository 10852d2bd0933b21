"""``generator.backend: images``: pre-made images from a folder, served as if a generator made them.

For audits of a model the pipeline cannot train (a hosted API, SDXL, someone's fine-tune): export the
prompts (``biasloop prompts export``, one row per image with its ``prompt_id`` and seed), make the images
anywhere, put them in a folder with a ``manifest.csv`` (columns ``prompt_id,file``; ``file`` relative to
the folder, any format Pillow reads) or as webdataset shards (``*.tar`` in the folder, each image a member
named ``<prompt_id>.<ext>``, :func:`read_shard_index`), and point ``generator.images`` at the folder. ``generate@N`` then
asks this backend for exactly the exported ``(prompt, seed)`` pairs, and label, paradox and evaluate
run on the images like on any generator's (docs/audit.md).

An image is keyed by :func:`prompt_id`, a hash of its prompt and seed, so the backend needs nothing but
the folder: the pipeline's request for ``(prompt, seed)`` names the image it wants.

Checks (:meth:`ImageFolderGenerator.check_requests`, run once by ``generate@N`` over all its requests):

- *missing*: a requested ``prompt_id`` with no manifest row or no file;
- *unreadable*: a file Pillow cannot decode;
- *wrong size*: an image that is not ``generator.image_size`` pixels square;
- *extra*: a manifest row no request names, or an image file in the folder no manifest row names.

``generator.images_on_error: error`` (default) raises one error naming every problem by kind (first 10
of each, and the count). ``skip`` records them instead: missing, unreadable and wrong-size images are left
out of the generation (their rows never reach the manifest), extra ones ignored, and all are counted in
``import.json`` beside ``generate@N``'s manifest and in its MLflow metrics. Nothing is dropped silently.
A manifest naming a ``prompt_id`` twice, or a file outside the folder, is always an error.

Only the requests an export lists can be served: the loop's replacement images (``mix@N``) ask for
prompts no export had, so an images run is a generation-0 run (``generations: [0]``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from biasloop.core.config import to_dict
from biasloop.models.generators import MANIFEST, GeneratorConfig, check_prompts_seeds, config_from_manifest

IMAGES_MANIFEST = "manifest.csv"  # in the images folder: prompt_id,file
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SHOWN = 10  # problems named per kind in an error message
PROBLEMS = ("missing", "unreadable", "wrong_size", "extra")


def prompt_id(prompt: str, seed: int) -> str:
    """The stable id of one requested image: ``p`` + the first 16 hex digits of SHA-256 of ``"seed\\x1fprompt"``.

    The same ``(prompt, seed)`` gets the same id on every machine and in every run; the export writes it
    and this backend looks images up by it.
    """
    return "p" + hashlib.sha256(f"{int(seed)}\x1f{prompt}".encode()).hexdigest()[:16]


@dataclasses.dataclass
class ImportReport:
    """What an images folder served for one generation's requests (written as ``import.json``)."""

    folder: str
    policy: str
    n_requested: int
    kept: list[int]  # indices into the requests that were served
    missing: list[str] = dataclasses.field(default_factory=list)  # prompt_ids
    unreadable: list[str] = dataclasses.field(default_factory=list)  # files (relative to the folder)
    wrong_size: list[str] = dataclasses.field(default_factory=list)  # "file (W x H)"
    extra: list[str] = dataclasses.field(default_factory=list)  # prompt_ids or files

    def counts(self) -> dict[str, int]:
        """``n_requested``, ``n_served``, ``n_skipped`` and ``n_<problem>`` for each problem kind."""
        counts = {"n_requested": self.n_requested, "n_served": len(self.kept)}
        counts["n_skipped"] = self.n_requested - len(self.kept)
        counts.update({f"n_{kind}": len(getattr(self, kind)) for kind in PROBLEMS})
        return counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the counts, the policy and every problem named."""
        return {
            "folder": self.folder,
            "policy": self.policy,
            **self.counts(),
            **{kind: getattr(self, kind) for kind in PROBLEMS},
        }

    def message(self) -> str:
        """One line per problem kind naming the first :data:`SHOWN` of each."""
        lines = [f"{self.folder}: the images do not match the requests (generator.images_on_error: error)"]
        for kind in PROBLEMS:
            names = getattr(self, kind)
            if names:
                more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
                lines.append(f"  {len(names)} {kind.replace('_', ' ')}: {', '.join(names[:SHOWN])}{more}")
        if self.missing:
            lines.append("  (missing: prompt_ids of the export with no image; see docs/audit.md)")
        return "\n".join(lines)


def read_images_manifest(folder: str | Path) -> dict[str, str]:
    """``{prompt_id: file}`` from ``folder/manifest.csv`` and its webdataset shards (:func:`read_shard_index`);
    errors name the file, the line and the problem."""
    folder = Path(folder)
    path = folder / IMAGES_MANIFEST
    index = read_shard_index(folder)
    if not path.is_file():
        if index:
            return index
        raise FileNotFoundError(f"{path}: not found (an images folder needs a manifest.csv with prompt_id,file)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("prompt_id", "file") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (has {reader.fieldnames})")
        root = folder.resolve()
        for line, row in enumerate(reader, start=2):
            key, file = (row["prompt_id"] or "").strip(), (row["file"] or "").strip()
            if not key or not file:
                raise ValueError(f"{path}, line {line}: empty prompt_id or file")
            if key in index:
                raise ValueError(f"{path}, line {line}: prompt_id {key!r} named twice (or also in a shard)")
            if not (folder / file).resolve().is_relative_to(root):
                raise ValueError(f"{path}, line {line}: file {file!r} is outside the images folder")
            index[key] = file
    return index


def read_shard_index(folder: Path) -> dict[str, str]:
    """``{prompt_id: "<shard>.tar#<member>"}`` of the webdataset shards ``folder/*.tar``: each image member
    (by suffix, :data:`IMAGE_SUFFIXES`) is keyed by its file name up to the first dot, as webdataset keys
    samples; other members (``.json``, ``.txt``) are ignored. A key in two members is an error."""
    index: dict[str, str] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if not member.isfile() or name.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                key = name.name.split(".", 1)[0]
                if key in index:
                    raise ValueError(f"{shard}: prompt_id {key!r} in two members ({index[key]}, {member.name})")
                index[key] = f"{shard.name}#{member.name}"
    return index


def load_image(path: Path | io.BytesIO, size: int) -> np.ndarray:
    """One image (a file, or a shard member's bytes) as ``uint8 (size, size, 3)`` RGB.

    Raises:
        OSError: Pillow cannot read or decode the file.
        ValueError: the image is not ``size`` x ``size`` (message: ``"W x H"``).
    """
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.size != (size, size):
            raise ValueError(f"{image.size[0]} x {image.size[1]}")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ImageFolderGenerator:
    """Serves the images of ``config.images`` for the requests ``(prompt, seed)`` (see the module docstring)."""

    backend = "images"

    def __init__(self, config: GeneratorConfig, device: str = "cpu", seed: int = 0) -> None:
        if not config.images:
            raise ValueError("generator.images: the images backend needs the folder of images (docs/audit.md)")
        self.config = config
        self.folder = Path(config.images)
        self._index: dict[str, str] | None = None
        self._cache: dict[str, np.ndarray] = {}
        self._shards: dict[str, tarfile.TarFile] = {}

    def index(self) -> dict[str, str]:
        """The folder's ``{prompt_id: file or shard member}`` (read once)."""
        if self._index is None:
            self._index = read_images_manifest(self.folder)
        return self._index

    def _exists(self, entry: str | None) -> bool:
        return entry is not None and ("#" in entry or (self.folder / entry).is_file())

    def _load(self, entry: str) -> np.ndarray:
        """The image of an index entry: a file of the folder or a member of a shard."""
        if "#" not in entry:
            return load_image(self.folder / entry, self.config.image_size)
        shard, member = entry.split("#", 1)
        if shard not in self._shards:  # kept open: a member lookup reads the shard's headers once
            self._shards[shard] = tarfile.open(self.folder / shard)
        handle = self._shards[shard].extractfile(member)
        return load_image(io.BytesIO(handle.read() if handle is not None else b""), self.config.image_size)

    def check_requests(self, prompts: list[str], seeds: list[int]) -> ImportReport:
        """Check every request at once (decoding each image, kept for :meth:`generate`); under
        ``images_on_error: error`` raise one ``ValueError`` naming every problem, else report them."""
        check_prompts_seeds(prompts, seeds)
        index = self.index()
        ids = [prompt_id(p, s) for p, s in zip(prompts, seeds)]
        report = ImportReport(str(self.folder), self.config.images_on_error, len(ids), kept=[])
        for i, key in enumerate(ids):
            file = index.get(key)
            if not self._exists(file):
                report.missing.append(key)
                continue
            try:
                self._cache[key] = self._load(file)
            except ValueError as exc:
                report.wrong_size.append(f"{file} ({exc})")
                continue
            except OSError:
                report.unreadable.append(file)
                continue
            report.kept.append(i)
        wanted = set(ids)
        report.extra = sorted(k for k in index if k not in wanted)
        listed = {Path(f).as_posix() for f in index.values()}
        report.extra += sorted(
            p.relative_to(self.folder).as_posix()
            for p in self.folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.relative_to(self.folder).as_posix() not in listed
        )
        if self.config.images_on_error == "error" and any(getattr(report, k) for k in PROBLEMS):
            raise ValueError(report.message())
        return report

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        batch_size: int = 64,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        """The images of ``(prompts[i], seeds[i])``: ``uint8 (n, image_size, image_size, 3)``.

        ``batch_size``, ``guidance_scale`` and ``steps`` are the generator interface's and unused here.

        Raises:
            ValueError: a request has no image in the folder (naming its prompt_id and prompt), or an image
                is unreadable or the wrong size.
        """
        check_prompts_seeds(prompts, seeds)
        index = self.index()
        size = self.config.image_size
        out = np.zeros((len(prompts), size, size, 3), dtype=np.uint8)
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            key = prompt_id(prompt, seed)
            if key not in self._cache:
                file = index.get(key)
                if not self._exists(file):
                    raise ValueError(
                        f"{self.folder}: no image for prompt_id {key} ({prompt!r}, seed {seed}); the images "
                        "backend serves only exported requests (biasloop prompts export)"
                    )
                try:
                    self._cache[key] = self._load(file)
                except (OSError, ValueError) as exc:
                    raise ValueError(f"{self.folder / file}: unreadable or not {size} x {size} ({exc})") from exc
            out[i] = self._cache[key]
        return out

    def train(
        self, images: np.ndarray, captions: list[str], *, steps: int, seed: int, progress: bool = True
    ) -> dict[str, Any]:
        """Nothing to train: the images were made elsewhere. Returns ``steps`` 0, ``seconds`` 0 and ``final_loss`` None."""
        return {"steps": 0, "seconds": 0.0, "final_loss": None, "trained": False}

    def save(self, folder: str | Path) -> None:
        """Write ``generator.json`` (backend and config, whose ``images`` names the folder; images not copied)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"backend": self.backend, "config": to_dict(self.config)}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> ImageFolderGenerator:
        """The generator a :meth:`save` wrote into ``folder``."""
        from biasloop.models.weights import manifest_field, read_manifest

        path = Path(folder) / MANIFEST
        manifest = read_manifest(path, "a saved images generator")
        return cls(config_from_manifest(manifest_field(manifest, "config", path)), device=device)


def served_subset(generator: Any, plan: Any, seeds: list[int]) -> tuple[Any, list[int], ImportReport | None]:
    """``(plan, seeds, report)`` restricted to the requests ``generator`` can serve.

    For a generator without :meth:`ImageFolderGenerator.check_requests` (every model that makes its
    images), the inputs unchanged and no report. ``plan`` is a polars frame with a ``prompt`` column,
    one row per requested image, aligned with ``seeds``.

    Raises:
        ValueError: a problem under ``images_on_error: error``, or nothing left to serve.
    """
    if not hasattr(generator, "check_requests"):
        return plan, seeds, None
    report = generator.check_requests(plan["prompt"].to_list(), list(seeds))
    if not report.kept:
        raise ValueError(f"{report.folder}: none of the {report.n_requested} requested images could be served")
    return plan[report.kept], [seeds[i] for i in report.kept], report
