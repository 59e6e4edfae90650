"""`vaesearch promote`: the best checkpoint, evaluated on the test split, into the Model Registry.

The registered model is the decoder with a sigmoid (latent vectors in, digits
out), because MLflow's default pt2 format keeps only `forward`; the full VAE
checkpoint and its config ride along as artifacts of the same version for
evaluation. The alias moves only to a model with a lower validation loss.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.runs import AnalysisError, Search, Trial, load_search
from vae import data
from vae.checkpoint import load_model
from vae.config import TrainConfig
from vae.evaluation import evaluate_split
from vae.model import Generator
from vae.records import KIND, LATENT


def _history_tag(alias: str) -> str:
    return f"{alias}.history"


def _by_alias(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _versions(client: MlflowClient, name: str) -> list:
    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return []


def _choose(search: Search, run_id: str | None) -> Trial:
    if run_id:
        for t in search.trials:
            if t.run_id == run_id:
                if not t.rankable:
                    raise AnalysisError("run_id", f"run {run_id} ended {t.end_state} or is a replay; it has no model")
                return t
        raise AnalysisError("run_id", f"no trial {run_id} in experiment {search.name!r}")
    best = search.best()
    if best is None:
        raise AnalysisError("experiment", f"{search.name!r} has no finished trial with a finite loss")
    return best


def _result(version: Any, moved: bool) -> dict[str, Any]:
    tags = version.tags
    return {
        "run_id": tags["source_run_id"],
        "version": int(version.version),
        "val_loss": float(tags["val_loss"]),
        "test_loss": float(tags["test_loss"]),
        "iwae_test": float(tags["iwae_test"]) if "iwae_test" in tags else None,
        "iw_samples": int(tags.get("iw_samples", 0)) or None,
        "alias_moved": moved,
    }


def _set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point the alias at `version`, remembering the one it leaves for --rollback."""
    current = _by_alias(client, name, alias)
    if current is not None and current.version == str(version):
        return
    model = client.get_registered_model(name)
    history = json.loads(model.tags.get(_history_tag(alias), "[]"))
    if current is not None:
        history.append(current.version)
    client.set_registered_model_tag(name, _history_tag(alias), json.dumps(history))
    client.set_registered_model_alias(name, alias, str(version))


def rollback(client: MlflowClient, name: str, alias: str) -> dict[str, Any]:
    """Point the alias back at the version that held it before."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise AnalysisError("model_name", f"no registered model {name!r}") from None
    history = json.loads(model.tags.get(_history_tag(alias), "[]"))
    if not history:
        raise AnalysisError("rollback", f"no earlier version of {name!r} held @{alias}")
    previous = history.pop()
    client.set_registered_model_tag(name, _history_tag(alias), json.dumps(history))
    client.set_registered_model_alias(name, alias, previous)
    return _result(client.get_model_version(name, previous), moved=True)


def promote(
    client: MlflowClient,
    experiment: str,
    run_id: str | None = None,
    model_name: str = "vae-mnist",
    alias: str = "champion",
    force: bool = False,
    iw_samples: int = 100,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Register the chosen run's best checkpoint; move the alias when it beats the champion (or --force)."""
    search = load_search(client, experiment, with_history=False)
    trial = _choose(search, run_id)
    existing = next((v for v in _versions(client, model_name) if v.tags.get("source_run_id") == trial.run_id), None)
    if existing is not None:  # the same run promoted again: no new version, the same rule for the alias
        moved = _move_alias(client, model_name, alias, existing, force)
        return _result(client.get_model_version(model_name, existing.version), moved=moved)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(client.download_artifacts(trial.run_id, "checkpoint/best.pt", tmp))
        except (MlflowException, OSError):
            raise AnalysisError("run_id", f"run {trial.run_id} has no checkpoint/best.pt artifact") from None
        model, config, _ = load_model(local)
        tags = _measured(search, trial, model, config, iw_samples, data_dir)
        folder = Path(tmp) / "vae"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        local.rename(folder / "checkpoint.pt")
        version, checkpoint_uri = _register(client, search, trial, model, config.latent, folder, model_name)
    for key, value in {**tags, "checkpoint_uri": checkpoint_uri}.items():
        client.set_model_version_tag(model_name, version, key, value)
    registered = client.get_model_version(model_name, version)
    moved = _move_alias(client, model_name, alias, registered, force)
    return _result(registered, moved=moved)


def _measured(
    search: Search, trial: Trial, model: Any, config: TrainConfig, iw_samples: int, data_dir: Path | None
) -> dict[str, str]:
    """The version's tags: where it came from, its validation and test losses, the IWAE bound, the data's MD5s."""
    splits = data.load(data_dir)
    val = evaluate_split(model, config, "val", splits["val"])
    test = evaluate_split(model, config, "test", splits["test"], iw_samples)
    return {
        "source_run_id": trial.run_id,
        "search": search.name,
        "val_loss": f"{val['loss']:.6f}",
        "test_loss": f"{test['loss']:.6f}",
        "iwae_test": f"{test['iwae']:.6f}",
        "iw_samples": str(iw_samples),
        LATENT: str(config.latent),
        "config": json.dumps(config.to_dict()),
        **{k: v for k, v in search.parent.data.params.items() if k.startswith("md5_")},
    }


# What loading the generator imports besides MLflow, which MLflow would find by loading the model in a
# subprocess (about 8 s of every promote on 2 cores); pinned to this environment's versions, MLflow adds itself.
SERVING_PACKAGES = ("torch", "numpy", "cloudpickle", "pandas", "tqdm")


def serving_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def _register(
    client: MlflowClient, search: Search, trial: Trial, model: Any, latent: int, folder: Path, model_name: str
) -> tuple[str, str]:
    """Log the generator as an MLflow model (with the checkpoint beside it) in a promotion run; (version, URI)."""
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(
        experiment_id=search.experiment_id,
        run_name=f"promote-{trial.name}",
        tags={KIND: "promotion", "source_run_id": trial.run_id},
    ):
        mlflow.log_artifacts(str(folder), "vae")
        info = mlflow.pytorch.log_model(
            Generator(model).eval(),
            name="generator",
            input_example=np.zeros((16, latent), dtype=np.float32),  # batch > 1 keeps it dynamic
            registered_model_name=model_name,
            pip_requirements=serving_requirements(),
        )
        checkpoint_uri = f"{mlflow.get_artifact_uri('vae')}/checkpoint.pt"
    return str(info.registered_model_version), checkpoint_uri


def _move_alias(client: MlflowClient, name: str, alias: str, version: Any, force: bool) -> bool:
    """Point the alias at `version` if it has a lower validation loss than the alias's holder (or --force)."""
    holder = _by_alias(client, name, alias)
    if holder is not None and holder.version == str(version.version):
        return False
    beats = holder is None or float(version.tags["val_loss"]) < float(holder.tags.get("val_loss", "inf"))
    if beats or force:
        _set_alias(client, name, alias, version.version)
    return beats or force
