"""`biasloop audit` on glyph-world images with known hues: the shares it reports are the oracle's within
the instrument's stated error; the JSON and the self-contained HTML page; the reference kinds."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from biasloop.cli import main
from biasloop.core.config import from_dict
from biasloop.data.corpus import write_corpus
from biasloop.data.hues import oracle_labels
from biasloop.data.world import WorldConfig, build_world
from biasloop.models.generators.image_folder import prompt_id
from stages import instrument

N_PER_OCCUPATION = 60  # audited images per occupation


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An instrument trained on a glyph world (instrument stage, in-process), and a folder of images of
    another world (another world.seed): each image's hue is its known gender (the oracle)."""
    from PIL import Image

    from tests.conftest import committed_params

    root = tmp_path_factory.mktemp("audit")
    params = committed_params()
    params["occupations"] = ["engineer", "teacher", "nurse"]
    params["world"].update(
        samples_per_occupation=150, distractors=10, near_misses=6, glyphs=str(data_dir / "glyphs" / "mnist"),
        occupation_table=str(data_dir / "occupations" / "occupations_bls.tsv"),
    )  # fmt: skip
    params["instrument"].update(epochs=20, batch_size=64)  # the packaged MiniLM text tower (offline)
    # gender only: with tone on, this small instrument (150 samples per occupation, 20 epochs) abstained on
    # 32% of dark-toned women's glyphs and 3% of dark-toned men's, a bias of the confident shares that its
    # tpr and fpr do not state (the default run's instrument: 2.0% and 5.4%)
    params["world"]["tone"]["enabled"] = False
    params["attributes"] = {}
    params["tracking"].update(uri=f"sqlite:///{root / 'mlflow.db'}", background=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    world = from_dict(WorldConfig, params["world"], "world")
    samples, images = build_world(world, params["occupations"])
    write_corpus(samples, images, root / "artifacts/corpus", shard_size=256)
    args = ["--params", str(root / "params.yaml"), "--corpus", str(root / "artifacts/corpus/captions.parquet")]
    args += ["--out", str(root / "artifacts/instrument"), "--metrics", str(root / "metrics/instrument.json")]
    assert instrument.main(args) == 0

    other, pictures = build_world(
        from_dict(WorldConfig, {**params["world"], "seed": 99}, "world"), params["occupations"]
    )
    rows = other.with_row_index("row").filter(pl.col("true_gender").is_not_null())
    rows = rows.group_by("true_occupation", maintain_order=True).head(N_PER_OCCUPATION)
    folder = root / "images"
    folder.mkdir()
    export = []
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt_id", "file"])
        for i, (row, occupation) in enumerate(zip(rows["row"], rows["true_occupation"])):
            prompt = f"a photo of a {occupation}"
            key = prompt_id(prompt, i)
            Image.fromarray(pictures[row]).save(folder / f"{i:04d}.png")
            writer.writerow([key, f"{i:04d}.png"])
            export.append({"prompt_id": key, "prompt_kind": "neutral", "occupation": occupation, "prompt": prompt,
                           "seed": i, "source_id": None})  # fmt: skip
    pl.DataFrame(export).write_csv(root / "prompts.csv")
    oracle = oracle_labels(pictures[rows["row"].to_numpy()], world.hue_female, world.hue_male)
    pl.DataFrame({"occupation": rows["true_occupation"], "oracle": oracle.tolist()}).write_csv(root / "oracle.csv")
    train = samples.filter((pl.col("split") == "train") & pl.col("true_gender").is_not_null())
    counts = train.group_by(pl.col("true_occupation").alias("occupation")).agg(
        (pl.col("true_gender") == "female").sum().alias("n_female"),
        (pl.col("true_gender") == "male").sum().alias("n_male"),
    )
    counts.write_csv(root / "train_counts.csv")
    return root


def _audit(root: Path, reference: str, out: str, *extra: str, images: str = "images") -> int:
    return main(
        ["audit", "--images", str(root / images), "--prompts", str(root / "prompts.csv"), "--reference", reference,
         "--out", str(root / out), "--params", str(root / "params.yaml"), "--instrument", str(root / "artifacts/instrument"),
         "--instrument-metrics", str(root / "metrics/instrument.json"), "--n-boot", "200", "--no-progress", *extra]
    )  # fmt: skip


@pytest.mark.slow
def test_audit_reproduces_the_oracle_shares_within_the_stated_error(audit_dir: Path) -> None:
    assert _audit(audit_dir, str(audit_dir / "train_counts.csv"), "out") == 0
    result = json.loads((audit_dir / "out/audit.json").read_text())
    stated = json.loads((audit_dir / "metrics/instrument.json").read_text())
    # A confident label is right with probability tpr (women) or 1 - fpr (men): the measured share of
    # women is tpr F + fpr (1 - F), off the true F by at most max(1 - tpr, fpr) (plus sampling noise).
    error = max(1 - stated["tpr"], stated["fpr"])
    assert error < 0.2, stated  # an instrument good enough for the bound to say something
    oracle = pl.read_csv(audit_dir / "oracle.csv").filter(pl.col("oracle") != "abstain")
    truth = dict(oracle.group_by("occupation").agg((pl.col("oracle") == "female").mean()).rows())
    rows = result["pairings"]["prompt_vs_reference"]["table"]["per_occupation"]
    assert {r["occupation"] for r in rows} == set(truth)
    for row in rows:
        n = row["n_female_gen"] + row["n_male_gen"]
        noise = 2 * np.sqrt(truth[row["occupation"]] * (1 - truth[row["occupation"]]) / n)
        assert abs(row["share_gen"] - truth[row["occupation"]]) <= error + noise, (row, truth, error)
    labels = pl.read_csv(audit_dir / "out/labels.csv")
    assert len(labels) == result["n_labelled"] == 3 * N_PER_OCCUPATION
    assert result["images"]["n_served"] == 3 * N_PER_OCCUPATION and result["images"]["n_skipped"] == 0
    assert result["reference"] == {"kind": "counts", "source": str(audit_dir / "train_counts.csv"), "corrected": True}
    assert result["pairings"]["prompt_vs_reference"]["corrected"]["estimands"]["shift"]["estimate"] is not None
    from mlflow.tracking import MlflowClient  # tracking.enabled: the audit is one MLflow run

    client = MlflowClient(tracking_uri=f"sqlite:///{audit_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("biasloop").experiment_id])
    audits = [r for r in runs if r.data.tags.get("mlflow.runName") == "audit"]
    shift = result["pairings"]["prompt_vs_reference"]["overall"]["estimands"]["shift"]["estimate"]
    assert audits and audits[0].data.metrics["prompt_vs_reference.shift"] == pytest.approx(shift)


@pytest.mark.slow
def test_audit_page_is_self_contained_and_opens_offline(audit_dir: Path) -> None:
    assert _audit(audit_dir, str(audit_dir / "train_counts.csv"), "page") == 0
    page = audit_dir / "page/audit.html"
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 1 and "prompt_vs_reference" in text
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", text)  # nothing to fetch
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={audit_dir / 'profile'}"]  # fmt: skip
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<table>" in dom.stdout and "biasloop audit" in dom.stdout and "Decomposition" in dom.stdout


@pytest.mark.slow
def test_bls_reference_is_not_corrected_and_bad_images_are_named(
    audit_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bls = "bls:" + str(data_dir / "occupations" / "occupations_bls.tsv")
    assert _audit(audit_dir, bls, "bls") == 0
    result = json.loads((audit_dir / "bls/audit.json").read_text())
    assert result["reference"]["kind"] == "bls" and result["reference"]["corrected"] is False
    rows = {r["occupation"]: r for r in result["pairings"]["prompt_vs_reference"]["table"]["per_occupation"]}
    assert rows["engineer"]["share_train"] == pytest.approx(0.1072, abs=1e-6)  # the BLS share, 10.72%
    assert "counts, not images" in result["pairings"]["prompt_vs_reference"]["decomposition"]["reason"]
    shutil.copytree(audit_dir / "images", audit_dir / "broken")
    (audit_dir / "broken/0001.png").write_bytes(b"broken")
    assert _audit(audit_dir, bls, "bad", images="broken") == 2
    assert "1 unreadable: 0001.png" in capsys.readouterr().err
    assert _audit(audit_dir, bls, "skipped", "--on-error", "skip", images="broken") == 0
    skipped = json.loads((audit_dir / "skipped/audit.json").read_text())
    assert skipped["images"]["unreadable"] == ["0001.png"] and skipped["n_labelled"] == 3 * N_PER_OCCUPATION - 1


@pytest.mark.slow
def test_corpus_reference_gives_the_keyword_pairing_and_its_decomposition(audit_dir: Path) -> None:
    """An ingested corpus as the reference: its training captions that mention each occupation, labelled by
    the instrument, are the reference side; their gender indicators give the decomposition."""
    from biasloop.data.retrieval import retrieve_lazy

    assert _audit(audit_dir, str(audit_dir / "artifacts/corpus"), "corpus") == 0
    result = json.loads((audit_dir / "corpus/audit.json").read_text())
    assert result["reference"]["kind"] == "corpus" and list(result["pairings"]) == ["prompt_vs_keyword"]
    entry = result["pairings"]["prompt_vs_keyword"]
    corpus = pl.read_parquet(audit_dir / "artifacts/corpus/captions.parquet").filter(pl.col("split") == "train")
    matches = retrieve_lazy(corpus.lazy(), ["engineer", "nurse", "teacher"], keep=["true_gender"]).collect()
    truth = (
        matches.filter(pl.col("true_gender").is_not_null())
        .group_by("occupation")
        .agg((pl.col("true_gender") == "female").mean().alias("share"), pl.len().alias("n"))
    )
    stated = json.loads((audit_dir / "metrics/instrument.json").read_text())
    error = max(1 - stated["tpr"], stated["fpr"])
    rows = {r["occupation"]: r for r in entry["table"]["per_occupation"]}
    for occupation, share, n in truth.iter_rows():
        assert rows[occupation]["n_female_train"] + rows[occupation]["n_male_train"] <= n
        assert abs(rows[occupation]["share_train"] - share) <= error + 2 * np.sqrt(share * (1 - share) / n)
    decomposition = entry["decomposition"]
    assert decomposition["available"] is not False and decomposition["data"]["estimate"] is not None
    terms = decomposition["data"]["estimate"] + decomposition["generator_and_instrument"]["estimate"]
    assert terms == pytest.approx(entry["overall"]["estimands"]["shift"]["estimate"])
