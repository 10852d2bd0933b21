"""The on-disk embedding cache, and the packaged MiniLM loaded offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biasloop.data.embeddings import (
    CachedTextEncoder,
    FakeTextEncoder,
    default_cache_dir,
)


class CountingEncoder(FakeTextEncoder):
    """FakeTextEncoder that records every text it is asked to embed."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__(dim)
        self.seen: list[str] = []

    def encode(self, texts, batch_size=64, progress=False):
        self.seen.extend(texts)
        return super().encode(texts, batch_size, progress)


TEXTS = ["a nurse at work", "nurses on shift", "a dog", "a nurse at work", "an engineer"]


def test_second_call_embeds_nothing(tmp_path: Path) -> None:
    inner = CountingEncoder()
    cached = CachedTextEncoder(inner, tmp_path)
    first = cached.encode(TEXTS, batch_size=2)
    assert sorted(inner.seen) == sorted(set(TEXTS))  # duplicates embedded once
    assert cached.stats() == {"hits": 0, "misses": 5, "embedded": 4, "cached": 4}
    np.testing.assert_allclose(first, FakeTextEncoder(16).encode(TEXTS), atol=1e-6)

    inner.seen.clear()
    again = cached.encode(list(reversed(TEXTS)))
    assert inner.seen == []
    np.testing.assert_array_equal(again, first[::-1])
    assert cached.stats()["hits"] == 5


def test_cache_persists_across_processes_and_new_texts_only(tmp_path: Path) -> None:
    CachedTextEncoder(CountingEncoder(), tmp_path).encode(TEXTS)
    inner = CountingEncoder()
    fresh = CachedTextEncoder(inner, tmp_path)  # a new run: only the disk is shared
    out = fresh.encode(["a dog", "a chef", "nurses on shift"])
    assert inner.seen == ["a chef"]
    assert fresh.stats() == {"hits": 2, "misses": 1, "embedded": 1, "cached": 5}
    assert out.dtype == np.float32 and out.shape == (3, 16)


def test_cache_is_keyed_by_model(tmp_path: Path) -> None:
    CachedTextEncoder(CountingEncoder(16), tmp_path).encode(TEXTS)
    other = CountingEncoder(8)  # a different name: nothing shared
    CachedTextEncoder(other, tmp_path).encode(TEXTS)
    assert sorted(other.seen) == sorted(set(TEXTS))
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_new_cache_format_shares_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors made the old way (before a CACHE_FORMAT bump) are never served again."""
    from biasloop.data import embeddings

    CachedTextEncoder(CountingEncoder(), tmp_path).encode(TEXTS)
    monkeypatch.setattr(embeddings, "CACHE_FORMAT", embeddings.CACHE_FORMAT + 1)
    inner = CountingEncoder()
    CachedTextEncoder(inner, tmp_path).encode(TEXTS)
    assert sorted(inner.seen) == sorted(set(TEXTS))


def test_chunks_are_append_only_and_flushed(tmp_path: Path) -> None:
    cached = CachedTextEncoder(CountingEncoder(), tmp_path, flush_every=2)
    cached.encode([f"text {i}" for i in range(40)], batch_size=1)  # model calls of 16 texts
    chunks = sorted(cached.model_dir.glob("*.keys.npy"))
    assert len(chunks) >= 2
    before = {p: p.stat().st_mtime_ns for p in chunks}
    cached.encode(["text 0", "another"])
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # old chunks never rewritten
    assert len(list(cached.model_dir.glob("*.keys.npy"))) == len(chunks) + 1
    assert not list(cached.model_dir.glob(".*.tmp"))


def test_empty_input(tmp_path: Path) -> None:
    assert CachedTextEncoder(FakeTextEncoder(4), tmp_path).encode([]).shape == (0, 4)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BIASLOOP_EMBEDDING_CACHE", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "embeddings"
    monkeypatch.setenv("BIASLOOP_EMBEDDING_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"


def test_created_cache_dir_ignores_itself(tmp_path: Path) -> None:
    root = tmp_path / "repo" / ".cache" / "embeddings"
    CachedTextEncoder(FakeTextEncoder(4), root).encode(["x"])
    assert (root / ".gitignore").read_text().strip().endswith("*")


@pytest.mark.slow
def test_packaged_minilm_offline_ranks_paraphrase_first(tmp_path: Path) -> None:
    """Loads the wheel's all-MiniLM-L6-v2 with the hub switched off (in a child process, so the offline
    environment is the one the model is loaded in) and checks it understands a paraphrase."""
    script = f"""
import numpy as np
from biasloop.data.embeddings import CachedTextEncoder, load_text_encoder
encoder = CachedTextEncoder(load_text_encoder(None), {str(tmp_path)!r})
prompt, paraphrase, unrelated = encoder.encode(
    ["A photo of the face of a nurse", "close-up portrait of a nurse in scrubs", "a bowl of soup on a table"])
print(float(prompt @ paraphrase), float(prompt @ unrelated), encoder.dim)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    close, far, dim = done.stdout.split()
    assert int(dim) == 384
    assert float(close) > float(far) + 0.2


@pytest.mark.slow
def test_minilm_vector_does_not_depend_on_batch_mates(tmp_path: Path) -> None:
    """A text's vector is the same alone, beside longer texts, at another batch size and with the stage at
    1 or 2 torch threads, to the last bit.

    With plain ``SentenceTransformer.encode`` it was not: "a baker in uniform" padded beside a longer
    caption differed from its vector alone by 7e-8, and the embedding cache kept whichever came first.
    With 2 threads on an Intel CPU with AVX-512/AMX, "nurses" at batch size 256 differed from batch 64 by
    1.2e-7, and 1 thread from 2 likewise, until the model got one batch shape and one thread.
    """
    script = """
import numpy as np
import torch
from biasloop.data.embeddings import load_text_encoder
encoder = load_text_encoder(None)
texts = ["a baker in uniform", "a carpenter in uniform", "a bowl of fruit on a table",
         "close-up portrait of a nurse in scrubs at the end of a long night shift", "a chef", "nurses"]
first = None
for threads in (2, 1):
    torch.set_num_threads(threads)  # the stage's base.cpu_threads
    together = encoder.encode(texts, batch_size=64)
    for i, text in enumerate(texts):
        alone = encoder.encode([text], batch_size=256)[0]
        assert np.array_equal(alone, together[i]), (threads, text, float(np.abs(alone - together[i]).max()))
    assert np.array_equal(encoder.encode(texts[::-1], batch_size=2)[::-1], together), threads
    assert torch.get_num_threads() == threads  # restored after encoding
    first = together if first is None else first
    assert np.array_equal(together, first), float(np.abs(together - first).max())
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cached_texts_need_no_model(tmp_path: Path) -> None:
    """A stage whose texts are all cached neither loads the model nor imports sentence-transformers
    (seconds per process), and the cache remembers the model's width."""
    script = f"""
import sys
from biasloop.data.embeddings import load_cached_text_encoder
encoder = load_cached_text_encoder(None, cache_dir={str(tmp_path)!r})
vectors = encoder.encode(["a nurse at work"])
assert encoder.dim == 384 and vectors.shape == (1, 384), vectors.shape
assert encoder.encoder._model is None, "model loaded"
assert "sentence_transformers" not in sys.modules, "sentence_transformers imported"
"""
    # Seed the cache as a run with the real model would: model.json names the width, a chunk the vector.
    from biasloop.data.embeddings import SentenceTransformerEncoder

    class Named(FakeTextEncoder):
        def __init__(self) -> None:
            super().__init__(384)
            self.name = SentenceTransformerEncoder(None).name

    CachedTextEncoder(Named(), tmp_path).encode(["a nurse at work"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
