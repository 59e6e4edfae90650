"""`vaesearch promote`: the best checkpoint, evaluated on the test split, into the Model Registry.

One promotion run (`promote-<trial>`) registers the three models of
`analysis/serving.py` (latent codes to images, images to codes, images to
reconstructions); the full VAE checkpoint and its config ride along as
artifacts of the run for evaluation. The alias moves, on all three together,
only to a model with a lower validation loss.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.runs import AnalysisError, Search, Trial, load_search
from analysis.serving import SERVED, SERVES, Served, description, log_served, version_description
from vae import data
from vae.checkpoint import load_model
from vae.config import TrainConfig
from vae.evaluation import evaluate_split
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


def _result(version: Any, moved: bool, models: dict[str, str]) -> dict[str, Any]:
    tags = version.tags
    return {
        "run_id": tags["source_run_id"],
        "version": int(version.version),
        "val_loss": float(tags["val_loss"]) if "val_loss" in tags else None,  # None: tagged by no promotion
        "test_loss": float(tags["test_loss"]) if "test_loss" in tags else None,
        "iwae_test": float(tags["iwae_test"]) if "iwae_test" in tags else None,
        "iw_samples": int(tags.get("iw_samples", 0)) or None,
        "alias_moved": moved,
        "models": {name: int(v) if v else None for name, v in models.items()},  # None: no version of this run
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
    """Point the alias back at the version that held it before; the companions follow to that version's run
    (a companion with no version from it loses the alias, so the three never name different runs)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise AnalysisError("model_name", f"no registered model {name!r}") from None
    history = json.loads(model.tags.get(_history_tag(alias), "[]"))
    if not history:
        raise AnalysisError("rollback", f"no earlier version of {name!r} held @{alias}")
    previous = client.get_model_version(name, history.pop())
    client.set_registered_model_tag(name, _history_tag(alias), json.dumps(history))
    client.set_registered_model_alias(name, alias, previous.version)
    models = {name: previous.version}
    for served in SERVED[1:]:
        companion = served.name(name)
        version = _of_run(client, companion, previous.tags.get("source_run_id", ""))
        if version is not None:
            _set_alias(client, companion, alias, version.version)
        elif _by_alias(client, companion, alias) is not None:
            client.delete_registered_model_alias(companion, alias)
        models[companion] = version.version if version is not None else ""
    return _result(previous, moved=True, models=models)


def _of_run(client: MlflowClient, name: str, run_id: str) -> Any | None:
    """The version of a registered model that came from this run, if any."""
    return next((v for v in _versions(client, name) if v.tags.get("source_run_id") == run_id), None)


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
    """Register the chosen run's best checkpoint; move the alias when it beats the champion (or --force).

    A run promoted before makes no new versions (only a model it lacks, such as one added since).
    """
    search = load_search(client, experiment, with_history=False)
    trial = _choose(search, run_id)
    have = {served: _of_run(client, served.name(model_name), trial.run_id) for served in SERVED}
    missing = [served for served, version in have.items() if version is None]
    versions: dict[str, str] = {}
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(client.download_artifacts(trial.run_id, "checkpoint/best.pt", tmp))
            except (MlflowException, OSError):
                raise AnalysisError("run_id", f"run {trial.run_id} has no checkpoint/best.pt artifact") from None
            model, config, _ = load_model(local)
            main = have[SERVED[0]]
            if main is not None and "val_loss" in main.tags:  # measured when the main model was registered
                tags = dict(main.tags)
            else:  # never, or by a promotion that died before it tagged its versions
                tags = _measured(search, trial, model, config, iw_samples, data_dir)
            folder = Path(tmp) / "vae"
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
            local.rename(folder / "checkpoint.pt")
            versions, checkpoint_uri = _register(
                client, search, trial, model, config.latent, folder, model_name, missing
            )
        tags["checkpoint_uri"] = tags.get("checkpoint_uri", checkpoint_uri)
        precision = trial.params.get("precision", "fp32")
        for served in missing:
            name, version = served.name(model_name), versions[served.name(model_name)]
            for key, value in {**tags, SERVES: served.serves}.items():
                client.set_model_version_tag(name, version, key, value)
            client.update_model_version(name, version, description=version_description(tags, precision))
    models = {served.name(model_name): (v.version if v else "") for served, v in have.items()}
    models.update(versions)
    registered = client.get_model_version(model_name, models[model_name])
    moved = _move_alias(client, model_name, alias, registered, force)
    holder = _by_alias(client, model_name, alias)
    if holder is not None and holder.version == registered.version:  # the companions follow, added ones too
        for name, version in models.items():
            _set_alias(client, name, alias, version)
    return _result(registered, moved=moved, models=models)


def _measured(
    search: Search, trial: Trial, model: Any, config: TrainConfig, iw_samples: int, data_dir: Path | None
) -> dict[str, str]:
    """The version's tags: where it came from, its validation and test losses, the IWAE bound, the data's MD5s."""
    from tqdm import tqdm

    splits = data.load(data_dir)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    say(f"evaluating run {trial.run_id} on the validation split ({len(splits['val']):,} images)")
    val = evaluate_split(model, config, "val", splits["val"])
    say(f"and on the test split ({len(splits['test']):,} images), with the IWAE bound at K={iw_samples}")
    with tqdm(total=len(splits["test"]), desc=f"IWAE bound, K={iw_samples}", unit="img", file=sys.stderr) as bar:
        test = evaluate_split(model, config, "test", splits["test"], iw_samples, progress=bar.update)
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
    client: MlflowClient,
    search: Search,
    trial: Trial,
    model: Any,
    latent: int,
    folder: Path,
    model_name: str,
    wanted: list[Served],
) -> tuple[dict[str, str], str]:
    """Log the wanted models (with the checkpoint beside them) in a promotion run: ({name: version}, URI)."""
    mlflow.set_tracking_uri(client.tracking_uri)
    print(f"registering {', '.join(s.name(model_name) for s in wanted)} from run {trial.run_id}", file=sys.stderr)
    with mlflow.start_run(
        experiment_id=search.experiment_id,
        run_name=f"promote-{trial.name}",
        tags={KIND: "promotion", "source_run_id": trial.run_id},
    ):
        mlflow.log_artifacts(str(folder), "vae")
        versions = log_served(model, latent, model_name, wanted, serving_requirements())
        checkpoint_uri = f"{mlflow.get_artifact_uri('vae')}/checkpoint.pt"
    for served in wanted:
        client.update_registered_model(served.name(model_name), description=description(served, model_name))
    return versions, checkpoint_uri


def _move_alias(client: MlflowClient, name: str, alias: str, version: Any, force: bool) -> bool:
    """Point the alias at `version` if it has a lower validation loss than the alias's holder (or --force)."""
    holder = _by_alias(client, name, alias)
    if holder is not None and holder.version == str(version.version):
        return False
    beats = holder is None or float(version.tags["val_loss"]) < float(holder.tags.get("val_loss", "inf"))
    if beats or force:
        _set_alias(client, name, alias, version.version)
    return beats or force
