"""`vaesearch sample`: digits from a registered model, as the seed's Figures 6 and 7."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.runs import AnalysisError
from analysis.serving import SERVES
from vae.figures import manifold_latents, prior_latents, save_grid
from vae.records import LATENT


def model_version(client: MlflowClient, model_uri: str):
    """The registry entry behind models:/NAME@ALIAS or models:/NAME/VERSION."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        raise AnalysisError("model_uri", f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")
    name, alias, version = match.groups()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        raise AnalysisError("model_uri", f"no registered model version at {model_uri}") from None


def sample(client: MlflowClient, model_uri: str, out: Path, mode: str = "random", seed: int = 0) -> Path:
    """grid: a 10x10 walk over z in [-1, 1]^2 (Z=2 only); random: 100 draws from N(0, I)."""
    version = model_version(client, model_uri)
    if version.tags.get(SERVES, "generate") != "generate":
        raise AnalysisError("model_uri", f"{model_uri} takes images, not latent codes; sample needs the generator, "
                            "models:/NAME@ALIAS without -encoder or -reconstruct")  # fmt: skip
    latent = int(version.tags.get(LATENT, 0))
    if mode == "grid" and latent != 2:
        raise AnalysisError("mode", f"grid needs a model with Z=2; {model_uri} has Z={latent}; use `mode` random")
    mlflow.set_tracking_uri(client.tracking_uri)
    generator = mlflow.pytorch.load_model(model_uri)
    z = manifold_latents() if mode == "grid" else prior_latents(latent, seed=seed)
    with torch.no_grad():
        images = generator(z).float().clamp(0, 1).cpu()
    return save_grid(images, out)
