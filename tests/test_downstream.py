"""The downstream CLIP: open_clip from a repository config, trained from scratch, saved and loaded."""

from __future__ import annotations

import logging

import numpy as np

from biasloop.models.downstream_clip import (
    DownstreamConfig,
    _open_clip,
    expected_random_init,
    load_downstream,
    save_downstream,
    train_downstream_clip,
)


def test_train_save_load(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 16, 16, 3), dtype=np.uint8)
    captions = [f"a photo of a {'nurse' if i % 2 else 'chef'}" for i in range(40)]
    model, stats = train_downstream_clip(
        images, captions, DownstreamConfig(epochs=2, batch_size=16), seed=0, progress=False
    )
    assert stats["steps"] == 6 and np.isfinite(stats["final_loss"])
    image_vectors = model.encode_images(images[:5])
    text_vectors = model.encode_texts(["a photo of a nurse", "a chef"])
    assert image_vectors.shape == (5, 64) and text_vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1.0, atol=1e-5)
    save_downstream(model, tmp_path / "model", DownstreamConfig())
    loaded = load_downstream(tmp_path / "model")
    np.testing.assert_allclose(loaded.encode_images(images[:5]), image_vectors, atol=1e-5)


def test_same_seed_same_model() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(16, 16, 16, 3), dtype=np.uint8)
    captions = ["a nurse"] * 8 + ["a chef"] * 8
    first, _ = train_downstream_clip(images, captions, DownstreamConfig(epochs=1, batch_size=8), seed=3, progress=False)
    second, _ = train_downstream_clip(
        images, captions, DownstreamConfig(epochs=1, batch_size=8), seed=3, progress=False
    )
    np.testing.assert_allclose(first.encode_texts(["a nurse"]), second.encode_texts(["a nurse"]), atol=1e-6)


def test_learns_a_colour_word() -> None:
    """Solid red and blue images with captions naming the colour: zero-shot and retrieval both follow."""
    rng = np.random.default_rng(2)
    red = rng.random(64) < 0.5
    images = np.zeros((64, 16, 16, 3), dtype=np.uint8)
    images[red, :, :, 0] = 200
    images[~red, :, :, 2] = 200
    images = np.clip(images + rng.integers(0, 40, size=images.shape), 0, 255).astype(np.uint8)
    captions = [f"a {'red' if r else 'blue'} square" for r in red]
    model, stats = train_downstream_clip(
        images, captions, DownstreamConfig(epochs=15, batch_size=16), seed=0, progress=False
    )
    classes = model.encode_texts(["a red square", "a blue square"])
    predicted_red = (model.encode_images(images) @ classes.T).argmax(axis=1) == 0
    assert np.mean(predicted_red == red) > 0.9
    assert model.config.cpu_threads is None and stats["seconds"] > 0


def test_expected_random_initialisation_is_not_a_warning(caplog) -> None:
    """open_clip warns "No pretrained weights loaded ... initialized randomly" for pretrained=None; around
    our own tiny models that is the plan, so the warning is dropped (and only there)."""
    open_clip = _open_clip()
    with caplog.at_level(logging.INFO):
        with expected_random_init():
            open_clip.create_model("biasloop-tiny-clip", pretrained=None)
        assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
        open_clip.create_model("biasloop-tiny-clip", pretrained=None)  # outside: open_clip's own warning stays
    assert [r.levelname for r in caplog.records if "No pretrained weights loaded" in r.getMessage()] == ["WARNING"]

    caplog.clear()
    images = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    with caplog.at_level(logging.INFO):
        train_downstream_clip(images, ["a"] * 8, DownstreamConfig(epochs=1, batch_size=4), seed=0, progress=False)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert not [m for m in messages if "No pretrained weights loaded" in m[1]]
    assert (
        "INFO",
        "downstream CLIP biasloop-tiny-clip initialised randomly (trained here from scratch, by design)",
    ) in messages
