"""Reproducibility: random streams follow base.seed, models train on base.device, and two runs of a stage
on one machine with one thread count write byte-identical outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.config import from_dict
from biasloop.core.seeds import stream_seed
from biasloop.data.corpus import write_corpus
from biasloop.data.world import WorldConfig, build_world
from biasloop.loop.training import train_generation, training_seeds


# --- seeds and devices, without training -------------------------------------------------------------
class _RecordingGenerator:
    def __init__(self, calls: list, seed: int | None) -> None:
        self.calls = calls
        calls.append(("init", seed))

    def train(self, images: np.ndarray, captions: list[str], *, steps: int, seed: int) -> dict[str, Any]:
        self.calls.append(("train", seed))
        return {"steps": steps}

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True)


def test_training_streams_follow_base_seed_and_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import biasloop.models.downstream_clip as downstream_clip
    import biasloop.models.generators as generators

    calls: list = []
    monkeypatch.setattr(
        generators,
        "build_generator",
        lambda config, device="cpu", seed=None: calls.append(("device", device)) or _RecordingGenerator(calls, seed),
    )

    def fake_downstream(images, captions, config, seed, device="cpu", progress=True):
        calls.append(("downstream", seed, device))
        return object(), {"seconds": 0.0}

    monkeypatch.setattr(downstream_clip, "train_downstream_clip", fake_downstream)
    monkeypatch.setattr(downstream_clip, "save_downstream", lambda model, folder: Path(folder).mkdir())
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    from biasloop.core.io import write_image_shards

    refs = write_image_shards(images, tmp_path / "shards", 2)
    dataset = pl.DataFrame({"caption": ["a", "b"], "image_ref": refs})
    for seed, generation in ((0, 0), (0, 1), (1, 0)):
        calls.clear()
        stats = train_generation(
            dataset,
            tmp_path / f"out{seed}{generation}",
            None,
            None,
            seed=seed,
            generation=generation,
            device="cuda:7",
            generator_steps=3,
        )
        assert calls == [
            ("device", "cuda:7"),
            ("init", stream_seed(seed, "generator-init")),
            ("train", stream_seed(seed, "generator-train", generation)),
            ("downstream", stream_seed(seed, "downstream"), "cuda:7"),
        ]
        assert stats["seeds"] == training_seeds(seed, generation) and stats["device"] == "cuda:7"
    # common random numbers: the downstream CLIP and the generator's initial weights are shared across
    # generations (and ratios: nothing here depends on the ratio); the generator's training noise is not.
    assert training_seeds(0, 0)["downstream"] == training_seeds(0, 2)["downstream"]
    assert training_seeds(0, 0)["generator_init"] == training_seeds(0, 2)["generator_init"]
    assert training_seeds(0, 0)["generator_train"] != training_seeds(0, 1)["generator_train"]
    assert all(training_seeds(0, 1)[k] != training_seeds(1, 1)[k] for k in training_seeds(0, 1))


# --- two runs, identical bytes ------------------------------------------------------------------------
@pytest.fixture()
def workspace(tmp_path: Path, tiny_params: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIASLOOP_EMBEDDING_CACHE", str(tmp_path / "embedding-cache"))
    params = yaml.safe_load(tiny_params.read_text())
    params["base"]["cpu_threads"] = 1  # the same thread count in both runs (docs/reproducibility.md)
    params["tracking"]["enabled"] = False
    params["instrument"].update(text_encoder="fake:32", epochs=2, batch_size=64, folds=2)
    params["generator"].update(text_encoder="fake:32", train_steps=3, batch_size=16, warmup_steps=1)
    params["downstream"].update(epochs=1)
    tiny_params.write_text(yaml.safe_dump(params, sort_keys=False))
    samples, images = build_world(from_dict(WorldConfig, params["world"], "world"), params["occupations"])
    write_corpus(samples, images, "artifacts/corpus", shard_size=64)
    return tmp_path


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _set_seed(seed: int) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["base"]["seed"] = seed
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_instrument_stage_twice_is_byte_identical(workspace: Path) -> None:
    from stages import instrument

    for run in ("a", "b"):
        assert (
            instrument.main(
                [
                    "--params",
                    "params.yaml",
                    "--corpus",
                    "artifacts/corpus/captions.parquet",
                    "--out",
                    f"out/{run}/instrument",
                    "--metrics",
                    f"out/{run}/instrument.json",
                ]
            )
            == 0
        )
    first, second = _files(Path("out/a/instrument")), _files(Path("out/b/instrument"))
    assert first.keys() == second.keys() and "fold1/image_tower.pt" in first
    assert first == second  # weights, fold table, manifests: identical bytes
    metrics = [json.loads(Path(f"out/{run}/instrument.json").read_text()) for run in ("a", "b")]
    for m in metrics:
        m.pop("training_seconds")
    assert metrics[0] == metrics[1]

    _set_seed(1)
    assert (
        instrument.main(
            [
                "--params",
                "params.yaml",
                "--corpus",
                "artifacts/corpus/captions.parquet",
                "--out",
                "out/c/instrument",
                "--metrics",
                "out/c/instrument.json",
            ]
        )
        == 0
    )
    other = _files(Path("out/c/instrument"))
    assert other["fold0/image_tower.pt"] != first["fold0/image_tower.pt"]  # base.seed reaches every fold model
    assert other["folds.parquet"] != first["folds.parquet"]  # and the fold assignment


@pytest.mark.slow
def test_pretrain_twice_is_byte_identical_and_follows_base_seed(workspace: Path) -> None:
    from stages import pretrain

    def run(name: str) -> dict[str, bytes]:
        assert (
            pretrain.main(
                ["--params", "params.yaml", "--corpus", "artifacts/corpus/captions.parquet", "--out", f"out/{name}"]
            )
            == 0
        )
        # training.json and generator.json hold wall-clock seconds; everything else must repeat exactly
        return _files(Path(f"out/{name}"), skip=("training.json", "generator.json"))

    first, second = run("a"), run("b")
    weights = (
        "generator/unet/diffusion_pytorch_model.safetensors",
        "generator/conditioning.safetensors",
        "downstream/model.pt",
    )
    assert set(weights) <= first.keys()
    assert first == second
    _set_seed(1)
    other = run("c")
    assert all(other[name] != first[name] for name in weights)
    seeds = json.loads(Path("out/c/training.json").read_text())["seeds"]
    assert seeds == training_seeds(1, 0)
