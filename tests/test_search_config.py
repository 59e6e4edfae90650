"""Config validation: every bad value exits 2 before any trial starts, naming its field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, cli, write_config

POINT = {"hidden": 8, "decoder": 1, "latent": 2}


@pytest.mark.parametrize(
    "sections, field",
    [
        ({"bogus": 1}, "bogus"),
        ({"space": {"decoder": [1, 7]}}, "space.decoder"),
        ({"space": {"latent": [0]}}, "space.latent"),
        ({"space": {"hidden": [-4]}}, "space.hidden"),
        ({"space": {"hidden": []}}, "space.hidden"),
        ({"asha": {"grace_period": 5}}, "asha.grace_period"),
        ({"asha": {"reduction_factor": 1}}, "asha.reduction_factor"),
        ({"budget": {"num_samples": 0}}, "budget.num_samples"),
        ({"budget": {"max_epochs": -1}}, "budget.max_epochs"),
        ({"budget": {"time_limit_s": 0}}, "budget.time_limit_s"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"resources": {"gpus": -1}}, "resources.gpus"),
        ({"asha": {"grace": 1}}, "asha.grace"),
        ({"scheduler": "hyperband"}, "scheduler"),
        ({"scheduler": "promotion"}, "budget.max_concurrent"),
        ({"study_storage": "postgresql+psycopg://me:secret@db/optuna"}, "--study-storage"),  # logged: no password
        ({"study_storage": "not a url"}, "--study-storage"),  # the tiny config sets it: paused trials would hold it
        ({"sampler": {"kind": "grid"}}, "sampler.kind"),
        ({"budget": {"max_total_epochs": 0}}, "budget.max_total_epochs"),
        ({"points": [{"hidden": 8, "decoder": 1}]}, "points.0"),
        ({"points": [POINT, {**POINT, "hidden": 9}]}, "points.1.hidden"),
        ({"points": [POINT] * 7}, "points"),
    ],
)
def test_bad_config_values_exit_2_naming_the_field(sections: dict, field: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", **sections)
    proc = cli("search", "--config", str(config), "--storage-path", str(tmp_path / "ray"),
                   "--tracking-uri", "http://127.0.0.1:9")  # fmt: skip
    assert_one_line_error(proc, field)
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize(
    "text, needle", [("", "empty"), ("name: [unclosed", "not valid YAML"), ("- 1\n- 2", "mapping")]
)
def test_malformed_or_empty_yaml(text: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(text)
    assert_one_line_error(cli("search", "--config", str(tmp_path / "c.yaml")), needle)


def test_missing_config_file(tmp_path: Path) -> None:
    assert_one_line_error(cli("search", "--config", str(tmp_path / "none.yaml")), "--config", "no such file")


def test_a_tracking_server_that_does_not_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")
    proc = cli("search", "--config", str(config), "--tracking-uri", "http://127.0.0.1:9",
                   "--storage-path", str(tmp_path / "ray"))  # fmt: skip
    assert_one_line_error(proc, "--tracking-uri", "no MLflow server answers")
    assert not (tmp_path / "ray").exists()


def test_address_without_tracking_uri_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")
    proc = cli("search", "--config", str(config), "--address", "auto")
    assert_one_line_error(proc, "--tracking-uri", "--address")


def test_shipped_configs_are_valid() -> None:
    from search import config
    from tests.helpers import REPO

    smoke = config.load(REPO / "configs" / "smoke.yaml")
    assert smoke.budget.num_samples >= 8 and smoke.budget.max_epochs <= 4 and smoke.asha.reduction_factor == 2
    for path in sorted(set((REPO / "configs").glob("*.yaml")) - {REPO / "configs" / "ray-cluster.example.yaml"}):
        config.load(path)
    seed = config.load(REPO / "configs" / "seed.yaml")
    assert (len(seed.space.hidden), len(seed.space.decoder), len(seed.space.latent)) == (3, 6, 4)


def test_an_explicit_bf16_is_judged_where_the_trials_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A driver without bf16 refuses it for a local search, but not for a cluster whose GPU workers decide."""
    from search import config
    from search.tuner import check_precision
    from vae import precision
    from vae.config import ConfigError

    monkeypatch.setattr(precision, "bf16_support", lambda device_type: (False, "no bf16 on this driver"))
    cfg = config.load(write_config(tmp_path / "c.yaml", train={"precision": "bf16"}, resources={"gpus": 1}))
    said: list[str] = []
    check_precision(cfg, "ray://head:10001", said.append)
    assert said == ["precision: bf16, judged by each trial on its node (param `precision`)"]
    with pytest.raises(ConfigError, match="bf16 cannot run here"):
        check_precision(cfg, None, said.append)


def test_a_data_folder_that_is_a_file_is_refused_before_the_server_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", data={"data_dir": str(tmp_path / "c.yaml")})
    proc = cli("search", "--config", str(config), "--storage-path", str(tmp_path / "ray"),
               env={"VAESEARCH_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(proc, "data.data_dir", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no embedded server's folder, no Ray state


def test_a_search_resumes_on_the_server_it_ran_on_and_no_other(tmp_path: Path) -> None:
    from search import config
    from search.state import VERSION, SearchState

    started = config.load(write_config(tmp_path / "c.yaml")).override(
        **{"tracking.tracking_uri": "http://127.0.0.1:9/"}
    )
    state = SearchState("tiny", started.model_dump(), "http://127.0.0.1:9/", "1", "0" * 32, version=VERSION)
    state.save(tmp_path / "ray" / "tiny")
    proc = cli("search", "--config", str(tmp_path / "c.yaml"), "--storage-path", str(tmp_path / "ray"), "--resume",
               "--tracking-uri", "http://127.0.0.1:8", env={"VAESEARCH_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(proc, "--tracking-uri", "ran on http://127.0.0.1:9/", "leave out --tracking-uri")
    proc = cli("search", "--config", str(tmp_path / "c.yaml"), "--storage-path", str(tmp_path / "ray"), "--resume",
               env={"VAESEARCH_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(proc, "--tracking-uri", "no MLflow server answers at http://127.0.0.1:9/")  # not embedded
    assert not (tmp_path / "home").exists()


def test_a_search_saved_by_0_1_0_is_refused_with_one_line(tmp_path: Path) -> None:
    """0.1.0's record has no version; its resume rebuilt the searcher, scheduler and callbacks Ray pickled."""
    from search import config

    started = config.load(write_config(tmp_path / "c.yaml"))
    old = {"name": "tiny", "config": started.model_dump(), "tracking_uri": "http://127.0.0.1:9/",
           "experiment_id": "1", "parent_run_id": "0" * 32, "created": "2026-11-20T10:00:00"}  # fmt: skip
    (tmp_path / "ray" / "tiny").mkdir(parents=True)
    (tmp_path / "ray" / "tiny" / "vaesearch.json").write_text(json.dumps(old))
    proc = cli("search", "--config", str(tmp_path / "c.yaml"), "--storage-path", str(tmp_path / "ray"), "--resume",
               env={"VAESEARCH_HOME": str(tmp_path / "home")})  # fmt: skip
    assert_one_line_error(proc, "--resume", "saved by vaesearch 0.1.0", "another --name")
    assert not (tmp_path / "home").exists()


def test_a_misspelt_required_key_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    space = "space: {hidden: [8], decoder: [1], latent: [2]}"
    path.write_text(f"name: t\n{space}\nbudget: {{num_sampels: 4, max_epochs: 1}}\n")
    assert_one_line_error(cli("search", "--config", str(path)), "budget.num_sampels", "did you mean num_samples?")
