"""Image captioners retrained on each generation's dataset (the replacement study's captioning task).

Two backends behind one interface (:class:`Captioner`: ``train(images, captions)`` then
``caption(images) -> list[str]``), chosen by ``captioner.backend``:

- ``glyph-transformer`` (default, offline, trains from scratch in seconds on a CPU): a small
  convolutional encoder whose feature map (one token per cell, plus a learned position embedding) is
  the memory of a ``torch.nn.TransformerDecoder`` (1 to 2 layers) over a word-level vocabulary built
  from the training captions (:func:`biasloop.data.text.caption_tokens`, words seen fewer than
  ``min_word_count`` times become ``<unk>``). Teacher-forced cross-entropy, AdamW with a one-cycle
  learning rate; greedy decoding.
- ``vision-encoder-decoder`` (the real study): a local Hugging Face ``VisionEncoderDecoderModel``
  folder (weights, image processor and tokenizer written by ``save_pretrained``), loaded with
  ``from_pretrained(folder, local_files_only=True, use_safetensors=True)`` (safetensors only; no remote
  code), fine-tuned on the generation's pairs for ``epochs`` (0: used as is) and decoded with
  ``generate`` (beam search when ``beam_size > 1``).

Models are tiny on the default world; on CPU they run with ``cpu_threads`` torch threads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from biasloop.core.runtime import cpu_threads
from biasloop.data.text import caption_tokens
from biasloop.models.leakage import LeakageConfig
from biasloop.models.optimisation import fit_one_cycle
from biasloop.models.tensors import images_to_tensor

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """``captioner``: the captioning model retrained per generation and how it is scored."""

    backend: Literal["glyph-transformer", "vision-encoder-decoder"] = "glyph-transformer"
    model: str | None = None  # vision-encoder-decoder: local folder written by save_pretrained
    widths: tuple[int, ...] = (16, 32)  # glyph-transformer: conv channels per encoder stage (stride 2 each)
    d_model: int = 64  # glyph-transformer: decoder width
    heads: int = 4  # glyph-transformer: attention heads
    layers: int = 1  # glyph-transformer: TransformerDecoder layers
    dropout: float = 0.1  # glyph-transformer: decoder dropout
    min_word_count: int = 2  # glyph-transformer: rarer training words become <unk>
    epochs: int = 10  # passes over the dataset (vision-encoder-decoder: 0 uses the checkpoint as is)
    batch_size: int = 256  # pairs per batch
    learning_rate: float = 0.005  # AdamW peak learning rate (one-cycle schedule)
    max_length: int = 16  # longest caption generated, in tokens
    beam_size: int = 1  # vision-encoder-decoder: beams in generate (glyph-transformer decodes greedily)
    cpu_threads: int | None = None  # torch CPU threads while training/decoding (None: base.cpu_threads)
    n_boot: int = (
        200  # bootstrap resamples of the test images/captions for the intervals of BLEU, ROUGE-L, CIDEr-D, LIC
    )
    leakage: LeakageConfig = LeakageConfig()  # the LIC leakage classifier

    BACKEND_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {  # keys only one backend reads (a warning otherwise)
        "glyph-transformer": ("widths", "d_model", "heads", "layers", "dropout", "min_word_count"),
        "vision-encoder-decoder": ("model", "beam_size"),
    }


class Captioner(Protocol):
    """What the captioner stage needs from a model."""

    def train(self, images: np.ndarray, captions: Sequence[str], seed: int, progress: bool = True) -> dict[str, Any]:
        """Fit on ``uint8 (n, h, w, 3)`` images and their captions; returns training statistics."""

    def caption(self, images: np.ndarray, batch_size: int = 256) -> list[str]:
        """One caption per image."""

    @property
    def vocabulary(self) -> set[str] | None:
        """The words the model can write (None: unknown), for the leakage classifier's vocabulary alignment."""


class Vocabulary:
    """Word <-> index, specials first (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Sequence[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(t for c in captions for t in caption_tokens(c))
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_length: int) -> list[int]:
        """``<bos> w1 .. wk <eos>`` ids, the words cut to ``max_length``."""
        ids = [self.index.get(t, self.index[UNK]) for t in caption_tokens(caption)][:max_length]
        return [self.index[BOS], *ids, self.index[EOS]]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``; specials dropped."""
        words = []
        for i in ids:
            word = self.words[int(i)]
            if word == EOS:
                break
            if word not in SPECIALS:
                words.append(word)
        return " ".join(words)


def _build_network(config: CaptionerConfig, vocabulary_size: int, image_size: int) -> Any:
    import torch
    import torch.nn as nn

    if not config.widths:
        raise ValueError("captioner.widths: at least one conv stage is needed")
    if config.d_model % config.heads:
        raise ValueError(f"captioner.d_model ({config.d_model}) must be divisible by captioner.heads ({config.heads})")

    class GlyphCaptionNet(nn.Module):
        """Conv encoder -> feature-map tokens -> TransformerDecoder over words."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 3
            for width in config.widths:
                layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            self.encoder = nn.Sequential(*layers, nn.Conv2d(channels, config.d_model, 1))
            side = image_size
            for _ in config.widths:
                side = (side + 1) // 2
            self.memory_positions = nn.Parameter(torch.zeros(1, side * side, config.d_model))
            self.embed = nn.Embedding(vocabulary_size, config.d_model, padding_idx=0)
            self.positions = nn.Parameter(torch.zeros(1, config.max_length + 2, config.d_model))
            nn.init.normal_(self.memory_positions, std=0.02)
            nn.init.normal_(self.positions, std=0.02)
            layer = nn.TransformerDecoderLayer(
                config.d_model,
                config.heads,
                dim_feedforward=2 * config.d_model,
                dropout=config.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.decoder = nn.TransformerDecoder(layer, config.layers)
            self.norm = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, vocabulary_size)

        def encode(self, images: Any) -> Any:
            features = self.encoder(images)  # (n, d, h, w)
            return features.flatten(2).transpose(1, 2) + self.memory_positions

        def forward(self, memory: Any, tokens: Any) -> Any:
            length = tokens.shape[1]
            causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
            x = self.embed(tokens) + self.positions[:, :length]
            x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, tgt_key_padding_mask=tokens == 0)
            return self.head(self.norm(x))

    return GlyphCaptionNet()


class GlyphTransformerCaptioner:
    """The default captioner: trained from scratch (see the module docstring)."""

    def __init__(self, config: CaptionerConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.words: Vocabulary | None = None
        self.network: Any = None
        self.image_size: int | None = None

    @property
    def vocabulary(self) -> set[str] | None:
        return None if self.words is None else set(self.words.words) - set(SPECIALS)

    def train(self, images: np.ndarray, captions: Sequence[str], seed: int, progress: bool = True) -> dict[str, Any]:
        import torch

        config = self.config
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        if len(images) == 0:
            raise ValueError("no training pairs for the captioner")
        if config.epochs < 1 or config.batch_size < 1:
            raise ValueError("captioner.epochs and captioner.batch_size must be >= 1")
        start = time.perf_counter()
        self.words = Vocabulary.build(captions, config.min_word_count)
        self.image_size = int(images.shape[1])
        encoded = [self.words.encode(c, config.max_length) for c in captions]
        tokens = torch.zeros(len(encoded), max(len(e) for e in encoded), dtype=torch.long)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = torch.tensor(ids)
        with cpu_threads(config.cpu_threads, self.device):
            torch.manual_seed(seed)
            self.network = _build_network(config, len(self.words), self.image_size).to(self.device)
            pixels = images_to_tensor(images).to(self.device)
            tokens = tokens.to(self.device)
            loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)
            generator = torch.Generator().manual_seed(seed)
            self.network.train()

            def batch_loss(batch: Any) -> Any:
                batch_tokens = tokens[batch]
                batch_tokens = batch_tokens[:, : int((batch_tokens != 0).sum(1).max())]
                logits = self.network(self.network.encode(pixels[batch]), batch_tokens[:, :-1])
                return loss_fn(logits.reshape(-1, logits.shape[-1]), batch_tokens[:, 1:].reshape(-1))

            total, loss_value = fit_one_cycle(
                self.network.parameters(),
                batch_loss,
                len(images),
                config,
                weight_decay=0.01,
                pct_start=0.15,
                generator=generator,
                desc="captioner steps",
                progress=progress,
            )
            self.network.eval()
        stats = {
            "seconds": time.perf_counter() - start,
            "steps": total,
            "final_loss": loss_value,
            "n_pairs": len(captions),
            "vocabulary_size": len(self.words),
        }
        log.info(
            "captioner: %d pairs, %d words, %d steps, final loss %.3f, %.1f s",
            len(captions),
            len(self.words),
            total,
            loss_value,
            stats["seconds"],
        )
        return stats

    def caption(self, images: np.ndarray, batch_size: int = 256) -> list[str]:
        """Greedy decoding: the most likely next word at each step, up to ``<eos>`` or ``max_length`` words."""
        import torch

        if self.network is None or self.words is None:
            raise ValueError("the captioner is not trained")
        out: list[str] = []
        bos, eos = self.words.index[BOS], self.words.index[EOS]
        with cpu_threads(self.config.cpu_threads, self.device), torch.no_grad():
            for start in range(0, len(images), batch_size):
                pixels = images_to_tensor(images[start : start + batch_size], self.image_size).to(self.device)
                memory = self.network.encode(pixels)
                tokens = torch.full((len(pixels), 1), bos, dtype=torch.long, device=self.device)
                finished = torch.zeros(len(pixels), dtype=torch.bool, device=self.device)
                for _ in range(self.config.max_length + 1):
                    logits = self.network(memory, tokens)[:, -1]
                    logits[:, : bos + 1] = float("-inf")  # never <pad> or <bos>
                    following = torch.where(
                        finished, torch.full_like(finished, eos, dtype=torch.long), logits.argmax(-1)
                    )
                    tokens = torch.cat([tokens, following[:, None]], dim=1)
                    finished |= following == eos
                    if bool(finished.all()):
                        break
                out.extend(self.words.decode(row[1:].tolist()) for row in tokens.cpu())
        return out


class VisionEncoderDecoderCaptioner:
    """A local Hugging Face ``VisionEncoderDecoderModel`` checkpoint (see the module docstring)."""

    def __init__(self, config: CaptionerConfig, device: str = "cpu") -> None:
        from transformers import (
            AutoImageProcessor,
            AutoTokenizer,
            VisionEncoderDecoderModel,
        )

        if not config.model:
            raise ValueError("captioner.model: the vision-encoder-decoder backend needs a local checkpoint folder")
        folder = Path(config.model)
        if not folder.is_dir():
            raise FileNotFoundError(f"captioner.model: {folder} is not a folder (save_pretrained output expected)")
        self.config = config
        self.device = device
        with cpu_threads(config.cpu_threads, device):
            self.model = VisionEncoderDecoderModel.from_pretrained(
                folder, local_files_only=True, use_safetensors=True
            ).to(device)
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        generation = self.model.config
        if generation.decoder_start_token_id is None or generation.pad_token_id is None:
            raise ValueError(
                f"{folder}: config needs decoder_start_token_id and pad_token_id for training and generation"
            )
        self.model.eval()

    @property
    def vocabulary(self) -> set[str] | None:
        return None

    def _pixels(self, images: np.ndarray) -> Any:
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)

    def train(self, images: np.ndarray, captions: Sequence[str], seed: int, progress: bool = True) -> dict[str, Any]:
        """Fine-tune every weight with the model's own captioning loss (``labels``), AdamW, one-cycle."""
        import torch
        from tqdm.auto import tqdm

        config = self.config
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        start = time.perf_counter()
        total = -(-len(images) // config.batch_size) * config.epochs
        loss_value = float("nan")
        if total:
            with cpu_threads(config.cpu_threads, self.device):
                torch.manual_seed(seed)
                optimiser = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate)
                schedule = torch.optim.lr_scheduler.OneCycleLR(
                    optimiser, max_lr=config.learning_rate, total_steps=total
                )
                generator = torch.Generator().manual_seed(seed)
                self.model.train()
                with tqdm(total=total, desc="captioner steps", disable=not progress) as bar:
                    for _ in range(config.epochs):
                        order = torch.randperm(len(images), generator=generator).tolist()
                        for batch_start in range(0, len(order), config.batch_size):
                            batch = order[batch_start : batch_start + config.batch_size]
                            text = self.tokenizer(
                                [captions[i] for i in batch],
                                padding=True,
                                truncation=True,
                                max_length=config.max_length + 2,
                                return_tensors="pt",
                            )
                            labels = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100).to(self.device)
                            loss = self.model(pixel_values=self._pixels(images[batch]), labels=labels).loss
                            optimiser.zero_grad()
                            loss.backward()
                            optimiser.step()
                            schedule.step()
                            loss_value = float(loss.item())
                            bar.update(1)
                self.model.eval()
        return {
            "seconds": time.perf_counter() - start,
            "steps": total,
            "final_loss": loss_value,
            "n_pairs": len(captions),
        }

    def caption(self, images: np.ndarray, batch_size: int = 64) -> list[str]:
        import torch

        out: list[str] = []
        with cpu_threads(self.config.cpu_threads, self.device), torch.no_grad():
            for start in range(0, len(images), batch_size):
                generated = self.model.generate(
                    pixel_values=self._pixels(images[start : start + batch_size]),
                    max_new_tokens=self.config.max_length,
                    num_beams=self.config.beam_size,
                )
                out.extend(t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return out


def make_captioner(config: CaptionerConfig, device: str = "cpu") -> Captioner:
    """The captioner ``config.backend`` names (untrained; a checkpoint for vision-encoder-decoder)."""
    if config.backend == "glyph-transformer":
        return GlyphTransformerCaptioner(config, device)
    if config.backend == "vision-encoder-decoder":
        return VisionEncoderDecoderCaptioner(config, device)
    raise ValueError(f"captioner.backend: unknown backend {config.backend!r}")
