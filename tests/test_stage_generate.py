"""generate@N stage, in-process, on a tiny generator and tiny selections/corpus tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.core.io import load_images
from biasloop.loop.prompts import GenerateConfig, plan_prompts
from biasloop.models.generators import GeneratorConfig, build_generator

OCCUPATIONS = ["engineer", "nurse"]


def corpus_and_selections() -> tuple[pl.DataFrame, pl.DataFrame]:
    captions = {
        "c1": "an engineer at a desk",
        "c2": "a female engineer at work",
        "c3": "engineers on shift",
        "c4": "portrait of a nurse at work",
        "c5": "a man working as a nurse",
        "c6": "a bowl of fruit on a table",
    }
    corpus = pl.DataFrame(
        {
            "id": list(captions),
            "caption": list(captions.values()),
            "image_ref": [f"x.npy#{i}" for i in range(6)],
            "true_occupation": ["engineer"] * 3 + ["nurse"] * 2 + [None],
            "true_gender": ["male", "female", "male", "female", "male", None],
            "true_indicator": ["none", "female", "none", "none", "male", None],
            "split": ["train"] * 6,
        }
    )
    rows = [("keyword", "engineer", i) for i in ("c1", "c2", "c3")] + [("keyword", "nurse", i) for i in ("c4", "c5")]
    rows += [("nn", "engineer", "c1"), ("nn", "nurse", "c4")]
    selections = pl.DataFrame(
        {
            "selection": [r[0] for r in rows],
            "occupation": [r[1] for r in rows],
            "id": [r[2] for r in rows],
            "similarity": np.linspace(0.9, 0.5, len(rows)).tolist(),
            "rank": list(range(len(rows))),
        }
    )
    return corpus, selections


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    corpus, selections = corpus_and_selections()
    Path("artifacts/corpus").mkdir(parents=True)
    Path("artifacts/neighbours").mkdir(parents=True)
    corpus.write_parquet("artifacts/corpus/captions.parquet")
    selections.write_parquet("artifacts/neighbours/selections.parquet")
    config = GeneratorConfig(
        text_encoder="fake:32",
        image_size=8,
        channels=(8, 16),
        mid_attention=False,
        batch_size=4,
        warmup_steps=1,
        train_timesteps=20,
    )
    generator = build_generator(config, "cpu")
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[:, 2:6, 3] = [200, 30, 90]
    generator.train(images, corpus["caption"].to_list()[:4], steps=1, seed=0, progress=False)
    generator.save("artifacts/models/gen0/generator")
    params = {
        "base": {"seed": 0, "device": "cpu", "log_level": "INFO"},
        "tracking": {
            "enabled": True,
            "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "test",
            "background": False,
        },
        "occupations": OCCUPATIONS,
        "generate": {
            "neutral_prompts": ["a photo of {article} {occupation}", "{article} {occupation} at work"],
            "n_per_prompt": 3,
            "caption_selection": "keyword",
            "max_captions_per_occupation": 2,
            "batch_size": 5,
            "shard_size": 7,
        },
        "sampling": {"guidance_scale": 1.5, "steps": 2},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


ARGS = [
    "--generation",
    "0",
    "--generator",
    "artifacts/models/gen0/generator",
    "--selections",
    "artifacts/neighbours/selections.parquet",
    "--corpus",
    "artifacts/corpus/captions.parquet",
    "--out",
    "artifacts/gen0/generate",
]


def test_generate_stage_writes_manifest_and_images(workspace: Path) -> None:
    from stages.generate import main

    assert main(ARGS) == 0
    manifest = pl.read_parquet("artifacts/gen0/generate/manifest.parquet")
    assert manifest.columns[:5] == ["prompt_kind", "occupation", "prompt", "seed", "image_ref"]
    assert len(manifest) == 2 * (2 * 3) + 2 + 2
    neutral = manifest.filter(pl.col("prompt_kind") == "neutral")
    assert set(neutral["prompt"]) == {
        "a photo of an engineer",
        "an engineer at work",
        "a photo of a nurse",
        "a nurse at work",
    }
    captions = manifest.filter(pl.col("prompt_kind") == "caption")
    assert captions.filter(pl.col("occupation") == "nurse")["source_id"].sort().to_list() == ["c4", "c5"]
    assert set(captions["source_id"]) <= {"c1", "c2", "c3", "c4", "c5"}
    assert manifest["seed"].n_unique() == len(manifest)
    assert manifest["image_ref"][0].startswith("artifacts/gen0/generate/images/00000.npy#")
    images = load_images(manifest["image_ref"].to_list())
    assert images.shape == (len(manifest), 8, 8, 3) and images.dtype == np.uint8
    assert len(list(Path("artifacts/gen0/generate/images").glob("*.npy"))) == 3  # 16 images, 7 per shard
    assert not list(Path("artifacts/gen0").glob(".generate*"))  # no temporary leftovers

    # Rerun: same seeds, same images (atomic replace of the folder).
    assert main(ARGS) == 0
    again = pl.read_parquet("artifacts/gen0/generate/manifest.parquet")
    assert again["seed"].to_list() == manifest["seed"].to_list()
    np.testing.assert_array_equal(load_images(again["image_ref"].to_list()), images)

    # Another generation: other seeds, same prompts.
    assert main([*ARGS[:1], "1", *ARGS[2:-1], "artifacts/gen1/generate"]) == 0
    gen1 = pl.read_parquet("artifacts/gen1/generate/manifest.parquet")
    assert gen1["prompt"].to_list() == manifest["prompt"].to_list()
    assert gen1["seed"].to_list() != manifest["seed"].to_list()


def test_generate_stage_input_errors(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stages.generate import main

    bad = [a if a != "artifacts/models/gen0/generator" else "artifacts/models/missing" for a in ARGS]
    assert main(bad) == 2
    assert "generator.json" in capsys.readouterr().err
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["generate"]["caption_selection"] = "nope"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(ARGS) == 2
    assert "caption_selection" in capsys.readouterr().err
    params["generate"]["colour"] = 1
    Path("params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit):
        main(ARGS)
    assert not Path("artifacts/gen0/generate").exists()


def test_plan_prompts_caps_and_templates() -> None:
    corpus, selections = corpus_and_selections()
    config = GenerateConfig(neutral_prompts=("{article} {occupation}",), n_per_prompt=2, max_captions_per_occupation=1)
    plan = plan_prompts(config, OCCUPATIONS, selections, corpus, seed=0)
    assert plan["prompt_kind"].to_list() == ["neutral"] * 4 + ["caption"] * 2
    assert plan_prompts(config, OCCUPATIONS, selections, corpus, seed=0).equals(plan)
    assert plan["prompt"].to_list()[:2] == ["an engineer", "an engineer"]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_two_processes_write_the_same_images_as_one(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """generate.num_processes: 2 re-runs the stage under `accelerate launch` on CPU (gloo); the batches and
    seeds are fixed by index, and every process runs with base.cpu_threads torch threads, so the shards are
    byte-identical to one process's. Both thread counts, each from a process whose torch started with the
    other count (as pytest's own torch does): on Intel CPUs with AVX-512/AMX, MKL's float32 matrix products
    round differently with 1 and 2 threads; when the in-process run kept its torch's 2 threads and the
    launched processes got 1 (the count chosen at a busy moment), one pixel came out 1 off."""
    import torch

    from stages.generate import main

    monkeypatch.setenv(
        "PYTHONPATH", str(Path(__file__).resolve().parents[1])
    )  # the launched processes import this checkout
    other = 3 - threads
    torch.set_num_threads(other)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["base"]["cpu_threads"] = threads
    params["generate"]["batch_size"] = 3  # 16 images: 6 batches, 3 per process
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main([*ARGS[:-1], "artifacts/one/generate"]) == 0
    params["generate"]["num_processes"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main([*ARGS[:-1], "artifacts/two/generate"]) == 0
    one = pl.read_parquet("artifacts/one/generate/manifest.parquet")
    two = pl.read_parquet("artifacts/two/generate/manifest.parquet")
    assert one.drop("image_ref").equals(two.drop("image_ref"))
    shards = sorted(p.name for p in Path("artifacts/one/generate/images").glob("*.npy"))
    assert shards == sorted(p.name for p in Path("artifacts/two/generate/images").glob("*.npy"))
    for name in shards:
        assert (
            Path(f"artifacts/one/generate/images/{name}").read_bytes()
            == Path(f"artifacts/two/generate/images/{name}").read_bytes()
        )
    assert not list(Path("artifacts/two").glob(".generate*"))  # the parts folder is gone


def test_generate_stage_draws_real_beside_generated(workspace: Path) -> None:
    from stages.generate import main

    np.save("x.npy", np.full((6, 8, 8, 3), 120, dtype=np.uint8))  # the corpus images behind image_ref x.npy#i
    assert main([*ARGS, "--contact-sheet", "plots/generated/gen0.png"]) == 0
    sheet = Path("plots/generated/gen0.png")
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 2000
    assert not list(Path("plots/generated").glob(".gen0*"))
