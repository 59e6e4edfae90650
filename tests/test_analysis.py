"""Report, promote and sample against a real MLflow server."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib.image
import pytest
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.report import write_report, write_trials_csv
from analysis.runs import load_search
from mlflow_server import server
from tests.helpers import REPO, assert_one_line_error, cli, ctrl_c_able, promote
from vae import checkpoint
from vae.config import TrainConfig
from vae.figures import decode_images, manifold_latents, prior_latents, tile
from vae.model import VAE

pytestmark = pytest.mark.slow


def _fake_search(client: MlflowClient, name: str, trials: list[dict]) -> dict[str, str]:
    """A parent and child runs with known metric histories, as the search writes them."""
    exp = client.create_experiment(name)
    config = {"budget": {"num_samples": len(trials), "max_epochs": 4}}
    parent = client.create_run(exp, run_name=name, tags={"kind": "search", "vaesearch.search": name})
    client.log_batch(parent.info.run_id, params=[Param("config", json.dumps(config))])
    ids = {}
    for t in trials:
        tags = {"mlflow.parentRunId": parent.info.run_id, "end_state": t["end"], **t.get("tags", {})}
        run = client.create_run(exp, run_name=t["name"], tags=tags)
        params = [Param(k, str(t[k])) for k in ("hidden", "decoder", "latent")]
        now = int(time.time() * 1000)
        metrics = []
        best = float("inf")
        for epoch, (val, train, kl) in enumerate(t["curve"], start=1):
            best = min(best, val)
            for key, value in (("val_loss", val), ("train_loss", train), ("val_kl", kl), ("best_val_loss", best)):
                metrics.append(Metric(key, value, now, epoch))
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        ids[t["name"]] = run.info.run_id
    return ids


def test_report_tables_match_known_metric_values(mlflow_url: str, tmp_path: Path) -> None:
    client = MlflowClient(mlflow_url)
    ids = _fake_search(
        client,
        "known",
        [
            {"name": "a", "hidden": 128, "decoder": 6, "latent": 2, "end": "completed",
             "curve": [(150.0, 160.0, 3.0), (140.0, 145.0, 4.0), (141.0, 144.0, 4.5), (142.0, 143.0, 5.0)]},
            {"name": "b", "hidden": 64, "decoder": 1, "latent": 2, "end": "pruned", "curve": [(170.0, 180.0, 2.0)]},
            {"name": "c", "hidden": 128, "decoder": 1, "latent": 5, "end": "completed",
             "curve": [(160.0, 170.0, 6.0), (130.0, 150.0, 7.0), (135.0, 140.0, 8.0), (136.0, 139.0, 8.0)]},
            {"name": "nan", "hidden": 64, "decoder": 6, "latent": 2, "end": "failed", "curve": [(100.0, 90.0, 1.0)]},
            {"name": "dup", "hidden": 128, "decoder": 6, "latent": 2, "end": "completed",
             "tags": {"duplicate_of": "x"}, "curve": [(120.0, 120.0, 1.0)]},
        ],
    )  # fmt: skip
    report = write_report(client, "known", tmp_path).read_text()
    assert f"Run `{ids['c']}` (c)" in report  # lowest loss at any epoch: 130 at epoch 2; failed and replay left out
    assert "130.00 nats/img (8320.00 per 64) at epoch 2 of 4" in report
    # by hidden size: H=128's best is c (130.00), H=64's is the pruned b (the failed trial is out)
    assert "| 128 | decoder=1, hidden=128, latent=5 | 2 / 4 | 130.00 | 8320.00 | 9600.00 | completed | - |" in report
    assert (
        "| 64 | decoder=1, hidden=64, latent=2 | 1 / 1 | 170.00 | 10880.00 | 11520.00 | pruned | Table 1: 9309.64"
        in report
    )
    # by decoder: decoder 6's best is a, with both seed figures for H=128, decoder 6, Z=2
    row6 = next(line for line in report.splitlines() if line.startswith("| 6 |"))
    assert "140.00 | 8960.00" in row6 and "Table 2: 9093.10" in row6 and "Table 3: 8989.65" in row6
    assert "Table 2: 9093.10 (142.08/img), ours -1.5%, within 2%" in row6  # 8960 against 9093.10
    assert "Table 3: 8989.65 (140.46/img), ours -0.3%, within 2%" in row6
    assert "| 5 | decoder=1, hidden=128, latent=5 |" in report
    # 4 trained trials of 4+1+4+1 epochs (the duplicate replayed 1) against 5 x 4 = 20
    assert "Trials trained 10 epochs (and replayed 1" in report and "would take 20: 50%" in report
    for png in ("curves_hidden.png", "curves_decoder.png", "curves_latent.png"):
        assert (tmp_path / png).stat().st_size > 1000
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("known").experiment_id])
                  if r.data.tags.get("kind") == "search")  # fmt: skip
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_report_samples_each_latent_size_from_its_best_checkpoint(mlflow_url: str, tmp_path: Path) -> None:
    """The seed's Figures 5-7: one prior grid per latent size from that size's best trial, the Z=2 manifold."""
    client = MlflowClient(mlflow_url)
    ids = _fake_search(
        client,
        "by-latent",
        [
            {"name": "z2", "hidden": 8, "decoder": 1, "latent": 2, "end": "completed", "curve": [(150.0, 160.0, 3.0)]},
            {"name": "z5", "hidden": 8, "decoder": 1, "latent": 5, "end": "completed", "curve": [(120.0, 130.0, 9.0)]},
            {"name": "z5-worse", "hidden": 8, "decoder": 1, "latent": 5, "end": "pruned",
             "curve": [(125.0, 130.0, 9.0)]},
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    models = {}
    for name, latent in (("z2", 2), ("z5", 5), ("z5-worse", 5)):
        models[name] = VAE(1, 8, latent).eval()
        state = {
            "config": TrainConfig(decoder=1, hidden=8, latent=latent).to_dict(),
            "model": models[name].state_dict(),
        }
        path = checkpoint.save(state, tmp_path / name / "best.pt")
        client.log_artifact(ids[name], str(path), "checkpoint")
    out = tmp_path / "report"
    report = write_report(client, "by-latent", out).read_text()
    assert "## Samples by latent size" in report
    assert "Z=2: trial z2, 150.00 nats/img at epoch 1" in report and "Z=5: trial z5, 120.00" in report
    assert "![Z=2 manifold](z2_manifold.png)" in report and "![Z=5 samples](z5_samples.png)" in report
    assert not (out / "z5_manifold.png").exists()
    # one decoder and one H throughout: said once, no one-row tables or curves by them
    assert "Every ranked trial had hidden=8, decoder=1: no table or curves by those." in report
    assert "### By hidden size H" not in report and not (out / "curves_decoder.png").exists()
    assert "### By latent size Z (hidden=8, decoder=1 held fixed)" in report and (out / "curves_latent.png").exists()
    for png, name, z in (("z2_samples.png", "z2", prior_latents(2)), ("z2_manifold.png", "z2", manifold_latents()),
                         ("z5_samples.png", "z5", prior_latents(5))):  # fmt: skip
        drawn = matplotlib.image.imread(out / png)[..., 0]
        expected = tile(decode_images(models[name].decoder, z)).numpy()
        # an 8-bit PNG through a 256-step colormap: within 3 levels of the decoder's output
        assert drawn.shape == expected.shape and abs(drawn - expected).max() < 3 / 255, png
    worse = tile(decode_images(models["z5-worse"].decoder, prior_latents(5))).numpy()
    assert abs(matplotlib.image.imread(out / "z5_samples.png")[..., 0] - worse).max() > 0.05  # not the worse trial


def test_report_cli_on_a_real_search(finished: dict, mlflow_url: str, tmp_path: Path) -> None:
    proc = cli("report", "--experiment", "e2e", "--tracking-uri", mlflow_url, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.md").read_text()
    assert finished["summary"]["best_run_id"] in text
    assert (tmp_path / "best_samples.png").exists() and (tmp_path / "best_manifold.png").exists()
    # the tiny search trained and validated on subsets: said, and no seed figure set beside its losses
    assert "## Samples by latent size" not in text  # one latent size: the best run's grids say it all
    assert "**Subset run:** trained on the first 1,024 of the 50,000 training images and validated on" in text
    assert "Table 1:" not in text and "Table 2:" not in text and "Table 3:" not in text
    # what mattered: importance (not from 2 configs), parallel coordinates, best so far, ASHA's rungs
    assert (
        "Too few trials to rank parameters: 2 distinct configs among the ranked trials, where importance needs " in text
    )
    assert "| ASHA rung (epoch) | trials that reached it | went on past it |" in text and "| 1 | 6 |" in text
    for png in ("parallel_coordinates.png", "best_so_far.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"]({png})" in text
    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    client = MlflowClient(mlflow_url)
    kids = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], "tags.ray_trial_id != ''")
    epochs = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_loss")) for r in kids}
    assert len(rows) == sum(epochs[r.data.tags.get("duplicate_of", r.info.run_id)] for r in kids)  # replays: twins'
    assert all(epochs[r.info.run_id] == 0 for r in kids if "duplicate_of" in r.data.tags)
    parent = client.get_run(finished["summary"]["parent_run_id"])
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/parallel_coordinates.png", "report/best_so_far.png", "report/trials.csv"} <= logged


def test_compare_plots_the_best_so_far_of_searches(finished: dict, mlflow_url: str, tmp_path: Path) -> None:
    out = tmp_path / "compare.png"
    proc = cli("compare", "--experiment", "e2e", "--tracking-uri", mlflow_url, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    client = MlflowClient(mlflow_url)
    kids = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], "tags.ray_trial_id != ''")
    trained = sum(
        len(client.get_metric_history(r.info.run_id, "val_loss")) for r in kids if "duplicate_of" not in r.data.tags
    )
    assert summary["e2e"]["trial_epochs"] == trained  # replays of duplicates cost nothing
    assert summary["e2e"]["best_val_loss"] == pytest.approx(finished["summary"]["best_val_loss"])
    assert out.stat().st_size > 1000
    # the same search from the trials.csv its report writes: the same curve, with no server needed for it
    trials_csv = write_trials_csv(load_search(client, "e2e"), tmp_path / "e2e.csv")
    again = cli("compare", "--experiment", str(trials_csv), "--tracking-uri", mlflow_url, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["e2e"] == summary["e2e"]
    seed = cli("compare", "--experiment", "e2e", "--seed-sequence", str(trials_csv), str(trials_csv),
                   "--tracking-uri", mlflow_url, "--out", str(out))  # fmt: skip
    assert seed.returncode == 0, seed.stderr
    drawn = json.loads(seed.stdout.strip().splitlines()[-1])
    assert drawn["seed_best"] == pytest.approx(5939.02 / 64)  # the line to beat: Table 3's Z=20, per image
    assert len(drawn["seed_sequence_missing"]) == 13  # the tiny search trained none of the seed's configs
    bad = cli("compare", "--experiment", "no-such-search", "--tracking-uri", mlflow_url, "--out", str(out))
    assert_one_line_error(bad, "--experiment", "no-such-search")
    missing = cli(
        "compare", "--experiment", str(tmp_path / "gone.csv"), "--tracking-uri", mlflow_url, "--out", str(out)
    )
    assert_one_line_error(missing, "--experiment", "gone.csv")


def test_promote_points_the_alias_at_the_best_run(promoted: dict, finished: dict, mlflow_url: str) -> None:
    assert promoted["run_id"] == finished["summary"]["best_run_id"]
    assert promoted["alias_moved"] and promoted["iw_samples"] == 2
    assert promoted["iwae_test"] <= promoted["test_loss"] + 1.0
    client = MlflowClient(mlflow_url)
    version = client.get_model_version_by_alias("vae-mnist", "champion")
    assert int(version.version) == promoted["version"]
    assert version.tags["source_run_id"] == promoted["run_id"] and version.tags["search"] == "e2e"
    assert "md5_train-images-idx3-ubyte" in version.tags and json.loads(version.tags["config"])["latent"] == 2


def test_promote_again_is_a_no_op(promoted: dict, mlflow_url: str) -> None:
    again = promote(mlflow_url)
    assert again["version"] == promoted["version"] and not again["alias_moved"]
    assert again["models"] == promoted["models"]  # the companions are not registered again either
    for name, version in promoted["models"].items():
        assert len(MlflowClient(mlflow_url).search_model_versions(f"name = '{name}'")) == version


def test_a_worse_model_takes_the_alias_only_with_force_and_rollback_undoes_it(
    promoted: dict, finished: dict, mlflow_url: str
) -> None:
    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("e2e").experiment_id
    runs = client.search_runs([exp], "tags.ray_trial_id != ''")
    trained = [r for r in runs if "duplicate_of" not in r.data.tags]
    worst = max(trained, key=lambda r: r.data.metrics["best_val_loss"])
    assert worst.info.run_id != promoted["run_id"], "two configs were trained, so one is worse"
    worse = promote(mlflow_url, "--run-id", worst.info.run_id)
    assert worse["version"] != promoted["version"] and not worse["alias_moved"]
    assert client.get_model_version_by_alias("vae-mnist", "champion").version == str(promoted["version"])
    forced = promote(mlflow_url, "--run-id", worst.info.run_id, "--force")
    assert forced["version"] == worse["version"] and forced["alias_moved"]
    assert client.get_model_version_by_alias("vae-mnist", "champion").version == str(worse["version"])
    assert {n: int(client.get_model_version_by_alias(n, "champion").version) for n in forced["models"]} == \
        forced["models"]  # fmt: skip
    back = promote(mlflow_url, "--rollback")
    assert back["version"] == promoted["version"] and back["models"] == promoted["models"]
    for name, version in promoted["models"].items():  # all three back on the same run
        held = client.get_model_version_by_alias(name, "champion")
        assert held.version == str(version) and held.tags["source_run_id"] == promoted["run_id"], name

    # a version of the main model alone (as an older vaesearch registered it): rolling back to it takes the
    # companions' alias away rather than leave them on another run. Decoder 2: a channels-last one, exported
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    from analysis.promote import _set_alias
    from vae.model import VAE, Generator

    mlflow.set_tracking_uri(mlflow_url)
    with mlflow.start_run(experiment_id=client.create_experiment("older-vaesearch")):
        alone = mlflow.pytorch.log_model(
            Generator(VAE(2, 8, 2)).eval(), name="generator", input_example=np.zeros((2, 2), np.float32),
            registered_model_name="vae-mnist", serialization_format="pt2",
        ).registered_model_version  # fmt: skip
    for key, value in {"source_run_id": "an-older-run", "val_loss": "300.0", "test_loss": "301.0"}.items():
        client.set_model_version_tag("vae-mnist", str(alone), key, value)
    _set_alias(client, "vae-mnist", "champion", str(alone))  # the champion it was
    assert promote(mlflow_url, "--force")["alias_moved"]  # the best run again, on all three
    older = promote(mlflow_url, "--rollback")
    assert older["version"] == int(alone) and older["models"] == {"vae-mnist": int(alone), "vae-mnist-encoder": None,
                                                                  "vae-mnist-reconstruct": None}  # fmt: skip
    for name in ("vae-mnist-encoder", "vae-mnist-reconstruct"):
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias(name, "champion")
    assert promote(mlflow_url, "--force")["models"] == promoted["models"]  # as the tests after this one expect


def test_an_already_registered_better_run_takes_a_second_alias(promoted: dict, mlflow_url: str) -> None:
    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("e2e").experiment_id
    trained = [r for r in client.search_runs([exp], "tags.ray_trial_id != ''") if "duplicate_of" not in r.data.tags]
    worst = max(trained, key=lambda r: r.data.metrics["best_val_loss"])
    first = promote(mlflow_url, "--run-id", worst.info.run_id, "--alias", "staging")
    assert first["alias_moved"]  # nobody held @staging
    better = promote(mlflow_url, "--alias", "staging")  # the best run, registered already: no new version
    assert better["version"] == promoted["version"] and better["alias_moved"]
    assert client.get_model_version_by_alias("vae-mnist", "staging").version == str(promoted["version"])
    again = promote(mlflow_url, "--run-id", worst.info.run_id, "--alias", "staging")
    assert not again["alias_moved"] and again["version"] == first["version"]
    assert client.get_model_version_by_alias("vae-mnist", "champion").version == str(promoted["version"])


@pytest.mark.parametrize("mode", ["grid", "random"])
def test_sample_draws_a_10x10_grid_of_digits(promoted: dict, mlflow_url: str, tmp_path: Path, mode: str) -> None:
    out = tmp_path / f"{mode}.png"
    proc = cli("sample", "--tracking-uri", mlflow_url, "--out", str(out), "--mode", mode)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (280, 280)
    gray = image[..., 0]
    assert gray.std() > 0.05 and gray.max() - gray.min() > 0.5  # strokes on a background, not a blank page


def test_the_champion_is_three_described_models_with_exact_signatures(
    promoted: dict, mlflow_url: str, tmp_path: Path
) -> None:
    import mlflow
    import numpy as np
    import torch
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient()
    shapes = {"vae-mnist": ((-1, 2), (-1, 1, 28, 28)), "vae-mnist-encoder": ((-1, 28, 28), (-1, 2)),
              "vae-mnist-reconstruct": ((-1, 28, 28), (-1, 1, 28, 28))}  # fmt: skip
    assert set(promoted["models"]) == set(shapes)
    for name, (takes, gives) in shapes.items():
        version = client.get_model_version_by_alias(name, "champion")
        assert int(version.version) == promoted["models"][name] and version.tags["source_run_id"] == promoted["run_id"]
        assert "Validation loss" in version.description and "test loss" in version.description
        assert "Input:" in client.get_registered_model(name).description
        info = mlflow.models.get_model_info(f"models:/{name}@champion")
        assert info.signature.inputs.inputs[0].shape == takes and info.signature.outputs.inputs[0].shape == gives
        assert info.saved_input_example_info is not None
    # a flat image is refused by MLflow's check, naming the shape it expects
    encoder = mlflow.pyfunc.load_model("models:/vae-mnist-encoder@champion")
    with pytest.raises(MlflowException, match=re.escape("does not match expected shape (-1, 28, 28)")):
        encoder.predict(np.zeros((2, 784), np.float32))
    proc = cli("sample", "--tracking-uri", mlflow_url, "--model-uri", "models:/vae-mnist-encoder@champion",
               "--out", str(tmp_path / "s.png"))  # fmt: skip
    assert_one_line_error(proc, "--model-uri", "takes images")
    # what serving one installs: MLflow and torch at this environment's versions (given, not inferred)
    requirements = Path(mlflow.artifacts.download_artifacts("models:/vae-mnist-encoder@champion/requirements.txt"))
    lines = requirements.read_text().split()
    assert f"mlflow=={mlflow.__version__}" in lines and f"torch=={torch.__version__.split('+')[0]}" in lines, lines


def test_grid_mode_needs_z_2_and_unknown_names_are_refused(finished: dict, mlflow_url: str, tmp_path: Path) -> None:
    import mlflow
    import numpy as np

    from vae.model import VAE, Generator

    # a Z=5 generator registered as promote registers one (the tag `latent` is what sample reads)
    mlflow.set_tracking_uri(mlflow_url)
    client = MlflowClient(mlflow_url)
    with mlflow.start_run(experiment_id=client.create_experiment("z5")):
        info = mlflow.pytorch.log_model(
            Generator(VAE(6, 8, 5)).eval(), name="generator", input_example=np.zeros((2, 5), np.float32),
            registered_model_name="vae-z5", serialization_format="pt2",
        )  # fmt: skip
    client.set_model_version_tag("vae-z5", str(info.registered_model_version), "latent", "5")
    client.set_registered_model_alias("vae-z5", "champion", str(info.registered_model_version))
    out = tmp_path / "g.png"
    proc = cli("sample", "--tracking-uri", mlflow_url, "--model-uri", "models:/vae-z5@champion", "--out", str(out),
                   "--mode", "grid")  # fmt: skip
    assert_one_line_error(proc, "--mode", "Z=2")
    assert not out.exists()
    proc = cli("sample", "--tracking-uri", mlflow_url, "--model-uri", "models:/nope@champion", "--out", str(out))
    assert_one_line_error(proc, "--model-uri")
    proc = cli("report", "--experiment", "no-such-search", "--tracking-uri", mlflow_url)
    assert_one_line_error(proc, "--experiment", "no-such-search")
    proc = cli("promote", "--experiment", "e2e", "--tracking-uri", mlflow_url, "--run-id", "0" * 32)
    assert_one_line_error(proc, "--run-id")


def test_dashboard_serves_the_searchs_study_and_stops_on_ctrl_c(finished: dict) -> None:
    port = server.free_port()
    cmd = [sys.executable, "-m", "search", "dashboard", "e2e", "--storage-path", str(finished["storage"]),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_able
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    studies = json.loads(resp.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "the dashboard never answered"
        (study,) = [s for s in studies if s["study_name"] == "e2e"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=5) as resp:
            assert len(json.loads(resp.read())["trials"]) == 6
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert out.startswith(f"Optuna dashboard for e2e: http://127.0.0.1:{port}")
