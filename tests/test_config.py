"""Params validation: unknown keys and wrong types are rejected with the key named."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from biasloop.core.config import (
    ConfigError,
    from_dict,
    load_section,
    read_params,
    to_dict,
)
from biasloop.data.corpus import CorpusConfig
from biasloop.data.world import WorldConfig
from tests.conftest import committed_params


def test_repository_params_load() -> None:
    params = committed_params()
    world = load_section(WorldConfig, "world", params)
    assert world.markedness.counter == pytest.approx(0.4)
    assert load_section(CorpusConfig, "corpus", params).source == "world"
    assert 0.0 <= params["synthetic_ratio"] <= 1.0


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"world\.markednes: unknown key"):
        from_dict(WorldConfig, {"markednes": {}}, "world")


def test_nested_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"world\.markedness\.countr: unknown key"):
        from_dict(WorldConfig, {"markedness": {"countr": 0.1}}, "world")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"image_size": "16"}, r"world\.image_size: expected an integer, found '16'"),
        ({"image_size": True}, r"world\.image_size: expected an integer"),
        ({"markedness": {"base": "high"}}, r"world\.markedness\.base: expected a number"),
        ({"glyphs": 3}, r"world\.glyphs: expected a string"),
    ],
)
def test_wrong_type_is_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(WorldConfig, data, "world")


def test_exponent_without_dot_is_a_number() -> None:
    # PyYAML parses `3e-3` as a string; it is still the number a user meant.
    assert from_dict(WorldConfig, {"hue_jitter": "3e-3"}, "world").hue_jitter == pytest.approx(0.003)


def test_literal_and_optional() -> None:
    with pytest.raises(ConfigError, match=r"corpus\.source: expected one of \['world', 'webdataset', 'folder'\]"):
        from_dict(CorpusConfig, {"source": "laion"}, "corpus")
    assert from_dict(CorpusConfig, {"path": None}, "corpus").path is None
    assert from_dict(CorpusConfig, {"path": "x"}, "corpus").path == "x"


def test_configs_are_frozen_and_round_trip() -> None:
    world = from_dict(WorldConfig, {"image_size": 24, "markedness": {"base": 0.2}}, "world")
    with pytest.raises(dataclasses.FrozenInstanceError):
        world.image_size = 3  # type: ignore[misc]
    assert from_dict(WorldConfig, to_dict(world), "world") == world


def test_missing_section(tmp_path) -> None:
    (tmp_path / "p.yaml").write_text("base: {seed: 1}\n")
    with pytest.raises(ConfigError, match="world: section is missing"):
        load_section(WorldConfig, "world", read_params(tmp_path / "p.yaml"))


def test_cpu_threads_fixed_by_default_automatic_on_request() -> None:
    from biasloop.core.config import BaseConfig
    from biasloop.core.runtime import resolve_cpu_threads

    assert isinstance(BaseConfig.cpu_threads, int)  # the default is a count: the same numbers at any load
    assert committed_params()["base"]["cpu_threads"] != "auto"
    assert resolve_cpu_threads(3, cwd="/repo", cpus=2, busy=2) == 3  # a count is used as given, whatever the load
    assert resolve_cpu_threads(2, cwd="/repo/.dvc/tmp/exps/tmpab12cd", cpus=2) == 2  # in queued experiments too
    idle = {"WORLD_SIZE": "1"}
    assert resolve_cpu_threads("auto", cwd="/repo", cpus=2, busy=0, environ=idle) == 2  # every idle core
    assert (
        resolve_cpu_threads("auto", cwd="/repo", cpus=2, busy=1, environ=idle) == 1
    )  # beside a busy process: the free core
    assert resolve_cpu_threads("auto", cwd="/repo", cpus=2, busy=5, environ=idle) == 1  # at least one
    assert (
        resolve_cpu_threads("auto", cwd="/repo/.dvc/tmp/exps/tmpab12cd", cpus=2, environ=idle) == 1
    )  # dvc queue start -j N
    # a process `accelerate launch` started for num_processes takes its launcher's count, not the free CPUs
    launched = {"WORLD_SIZE": "2", "OMP_NUM_THREADS": "2"}
    assert resolve_cpu_threads("auto", cwd="/repo", cpus=2, busy=1, environ=launched) == 2
    for bad in (0, -1, "fast", True):
        with pytest.raises(ConfigError, match=r"base\.cpu_threads"):
            resolve_cpu_threads(bad)
    with pytest.raises(ConfigError, match=r"base\.cpu_threads"):
        load_section(BaseConfig, "base", {"base": {"cpu_threads": "fast"}})
    assert load_section(BaseConfig, "base", {"base": {"cpu_threads": "auto"}}).cpu_threads == "auto"


def test_a_stage_applies_its_thread_count_whatever_the_environment(tmp_path, monkeypatch) -> None:
    """The params decide: a leftover OMP_NUM_THREADS/MKL_NUM_THREADS, or a torch imported earlier with
    another count (the tests' own process), is overridden, and launched processes inherit the count."""
    import os

    import torch

    from biasloop.core.stage import load_configs, runtime_facts

    params = committed_params()
    for threads, other in ((1, 2), (2, 1)):
        params["base"]["cpu_threads"] = threads
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setenv("OMP_NUM_THREADS", str(other))
        monkeypatch.setenv("MKL_NUM_THREADS", str(other))
        torch.set_num_threads(other)
        load_configs(str(tmp_path / "params.yaml"), {})
        assert torch.get_num_threads() == threads
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(threads)
        assert runtime_facts() == {"cpu_threads": threads}


def test_busy_cpus_counts_runnable_threads_of_other_processes(tmp_path) -> None:
    """A fabricated /proc: runnable (R) threads at nice <= 0 count; sleeping, niced and our own do not."""
    import os

    from biasloop.core.runtime import busy_cpus

    def task(pid: int, tid: int, state: str, nice: int) -> None:
        fields = [state, "1", "1", "1", "0", "-1", "0"] + ["0"] * 9 + [str(nice)] + ["1", "0", "0"]
        path = tmp_path / str(pid) / "task" / str(tid)
        path.mkdir(parents=True)
        (path / "stat").write_text(f"{tid} (python -c while True: pass) " + " ".join(fields) + "\n")

    task(100, 100, "R", 0)  # a busy process
    task(101, 101, "R", 0)  # a busy process with two busy threads
    task(101, 102, "R", -5)
    task(102, 102, "S", 0)  # asleep
    task(103, 103, "R", 10)  # niced (the background MLflow logger)
    task(os.getpid(), os.getpid(), "R", 0)  # this process
    (tmp_path / "self").mkdir()
    assert busy_cpus(samples=2, interval=0.0, proc=str(tmp_path)) == 3
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 1\nprocs_blocked 0\n")
    assert busy_cpus(proc=str(tmp_path)) == 0  # only the caller runnable: no scan
    (tmp_path / "stat").write_text("cpu  1 2 3\nprocs_running 4\nprocs_blocked 0\n")
    assert busy_cpus(samples=1, proc=str(tmp_path)) == 3
    assert busy_cpus(proc=str(tmp_path / "missing")) == 0


def test_stage_main_turns_a_stage_body_into_an_exit_status(capsys) -> None:
    import logging

    from biasloop.core.stage import stage_main

    seen = []

    @stage_main(logging.getLogger("test"))
    def main(argv=None) -> None:
        seen.append(argv)
        if argv == ["bad"]:
            raise ValueError("corpus.path: not found")

    assert main(["ok"]) == 0
    assert main(["bad"]) == 2
    assert seen == [["ok"], ["bad"]]
    assert capsys.readouterr().err.strip() == "error: corpus.path: not found"
    assert main.__name__ == "main"
