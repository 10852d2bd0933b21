"""Captioners: the vocabulary, the default glyph-transformer on a tiny world (a stereotyped dataset makes
a captioner that mispredicts gender more), and a local VisionEncoderDecoderModel checkpoint with tiny
random weights written by save_pretrained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biasloop.core.config import ConfigError, from_dict
from biasloop.data.world import MarkednessConfig, WorldConfig, build_world
from biasloop.metrics.caption_bias import misprediction
from biasloop.models.captioner import CaptionerConfig, Vocabulary, make_captioner


def test_vocabulary_round_trip_and_unknown_words() -> None:
    words = Vocabulary.build(["A nurse at work.", "a nurse", "an engineer"], min_count=2)
    assert words.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and set(words.words[4:]) == {"a", "nurse"}
    ids = words.encode("A nurse, an engineer", max_length=3)
    assert ids[0] == words.index["<bos>"] and ids[-1] == words.index["<eos>"] and len(ids) == 5
    assert words.decode(ids[1:]) == "a nurse"  # unknown words dropped, cut at <eos>


def test_captioner_config_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="captioner.leakage.sedes"):
        from_dict(CaptionerConfig, {"leakage": {"sedes": 3}}, "captioner")
    with pytest.raises(ConfigError, match="captioner.backend"):
        from_dict(CaptionerConfig, {"backend": "clipcap"}, "captioner")


def _stereotype_world(data_dir: Path) -> tuple:
    """Teachers (mostly women) and lawyers (mostly men); half the images gender-ambiguous; every caption
    names the gender ("a young lady who is a teacher"), so a captioner must guess it for ambiguous images."""
    config = WorldConfig(
        glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
        samples_per_occupation=700,
        distractors=0,
        near_misses=0,
        plural_fraction=0.0,
        ambiguous_fraction=0.5,
        test_fraction=0.0,
        markedness=MarkednessConfig(base=1.0, counter=0.0),
        seed=0,
    )
    return build_world(config, ["teacher", "lawyer"])


@pytest.mark.slow
def test_a_captioner_trained_on_stereotyped_data_mispredicts_gender_more(data_dir: Path) -> None:
    samples, images = _stereotype_world(data_dir)
    occupation, gender = samples["true_occupation"].to_numpy(), samples["true_gender"].to_numpy()
    captions = samples["caption"].to_numpy()
    rng = np.random.default_rng(0)
    majority = {"teacher": "female", "lawyer": "male"}
    test, pool = [], {}
    for name in majority:  # a gender-balanced test set: 50 images per (occupation, gender)
        for g in ("female", "male"):
            members = rng.permutation(np.flatnonzero((occupation == name) & (gender == g)))
            test += members[:50].tolist()
            pool[name, g] = members[50:]
    test = np.array(test)
    datasets = {  # 300 training images each: only the majority gender, or half and half
        "stereotyped": np.concatenate([pool[name, majority[name]][:150] for name in majority]),
        "balanced": np.concatenate([pool[name, g][:75] for name in majority for g in ("female", "male")]),
    }
    clear = ~samples["true_ambiguous"].to_numpy()[test]
    errors = {}
    for name, rows in datasets.items():
        captioner = make_captioner(CaptionerConfig(epochs=15, batch_size=64, learning_rate=0.005, cpu_threads=1))
        stats = captioner.train(images[rows], captions[rows].tolist(), seed=0, progress=False)
        hypotheses = captioner.caption(images[test])
        assert stats["steps"] == 15 * 5 and all(isinstance(h, str) for h in hypotheses)
        named = np.mean([occupation[i] in h for i, h in zip(test, hypotheses)])
        assert named > 0.8, f"{name}: captions name the right occupation for only {named:.0%} of images"
        errors[name] = misprediction(hypotheses, gender[test].tolist())["error"]
        errors[name + " (clear images)"] = misprediction(
            [h for h, c in zip(hypotheses, clear) if c], gender[test][clear].tolist()
        )["error"]
    # Ambiguous images: any captioner is right half the time on a balanced test set. Clear images of the
    # minority gender: the stereotyped captioner falls back on the occupation, the balanced one reads the hue.
    assert errors["stereotyped"] > errors["balanced"] + 0.05, errors
    assert errors["stereotyped (clear images)"] > errors["balanced (clear images)"] + 0.1, errors


def _tiny_vision_encoder_decoder(folder: Path) -> None:
    """A random-weight ViT encoder + BERT decoder, a word-level tokenizer and an image processor."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        BertConfig,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    words = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"] + "a an nurse engineer at work photo of".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[SEP]",
        bos_token="[CLS]",
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(
            image_size=16,
            patch_size=4,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        BertConfig(
            vocab_size=len(words),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            is_decoder=True,
            add_cross_attention=True,
        ),
    )
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config=config)
    for key, value in (("decoder_start_token_id", 1), ("pad_token_id", 0), ("eos_token_id", 2)):
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )


@pytest.mark.slow
def test_vision_encoder_decoder_checkpoint_trains_and_captions(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = tmp_path / "checkpoint"
    _tiny_vision_encoder_decoder(folder)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    config = CaptionerConfig(
        backend="vision-encoder-decoder",
        model=str(folder),
        epochs=2,
        batch_size=4,
        max_length=6,
        beam_size=2,
        cpu_threads=1,
    )
    captioner = make_captioner(config)
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    before = [p.detach().clone() for p in captioner.model.parameters()]
    stats = captioner.train(images, ["a nurse at work"] * 3 + ["an engineer"] * 3, seed=0, progress=False)
    assert stats["steps"] == 4 and np.isfinite(stats["final_loss"])
    assert any(not bool((a == b.detach()).all()) for a, b in zip(before, captioner.model.parameters()))
    captions = captioner.caption(images)
    assert len(captions) == 6 and all(isinstance(c, str) for c in captions)
    assert set(" ".join(captions).split()) <= {"a", "an", "nurse", "engineer", "at", "work", "photo", "of"}
    with pytest.raises(FileNotFoundError, match="captioner.model"):
        make_captioner(CaptionerConfig(backend="vision-encoder-decoder", model=str(tmp_path / "missing")))
