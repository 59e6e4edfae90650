"""The champion as others use it: three registered models, one per question people ask of a VAE.

MLflow gives a model one input schema, so one model per question, each with an
exact signature: `NAME` (latent codes to images, as before), `NAME-encoder`
(images to latent codes) and `NAME-reconstruct` (images to reconstructions).
Each is a pt2 export of a small `vae.model` module (MLflow's pytorch flavor
keeps only `forward`), so loading or serving one needs torch and MLflow, never
this project's source. All three are logged by one promotion run and move
under the alias together.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import nn

from vae.model import VAE, Generator, LatentCode, Reconstruction
from vae.records import SEARCHED

IMAGES = "images (N, 28, 28) float32, pixels in [0, 1] (MNIST's bytes / 255)"
IMAGES_OUT = "images (N, 1, 28, 28) float32 in [0, 1]"


SERVES = "serves"  # a version's tag: which question it answers (generate, encode, reconstruct)


@dataclass(frozen=True)
class Served:
    serves: str
    suffix: str  # the registered model's name is the base name + suffix
    module: Callable[[VAE], nn.Module]
    takes: str
    gives: str
    question: str

    def name(self, base: str) -> str:
        return base + self.suffix

    def input_shape(self, latent: int) -> tuple[int, ...]:
        return (-1, latent) if self.module is Generator else (-1, 28, 28)

    def output_shape(self, latent: int) -> tuple[int, ...]:
        return (-1, latent) if self.module is LatentCode else (-1, 1, 28, 28)


SERVED = (
    Served("generate", "", Generator, "latent codes (N, Z) float32 (Z is the version's tag `latent`)", IMAGES_OUT,
           "latent codes to images (the decoder, with a sigmoid)"),
    Served("encode", "-encoder", LatentCode, IMAGES, "latent codes (N, Z) float32: the encoder's mean, no sampling",
           "images to latent codes"),
    Served("reconstruct", "-reconstruct", Reconstruction, IMAGES, IMAGES_OUT,
           "images to reconstructions (decoded latent means)"),
)  # fmt: skip


def signature(served: Served, latent: int) -> ModelSignature:
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, served.input_shape(latent))]),
        outputs=Schema([TensorSpec(f32, served.output_shape(latent))]),
    )


def input_example(served: Served, latent: int) -> np.ndarray:
    """A batch of 2 (a batch above 1 keeps the exported batch size dynamic): zeros, or the mid-grey image."""
    shape = (2, *served.input_shape(latent)[1:])
    return np.zeros(shape, np.float32) if served.module is Generator else np.full(shape, 0.5, np.float32)


def description(served: Served, base: str) -> str:
    """The registered model's description: what it answers, what it takes and gives, how to call it."""
    return (
        f"The promoted VAE of a vaesearch search, answering one question: {served.question}.\n\n"
        f"Input: {served.takes}. Output: {served.gives}.\n\n"
        f"Python: `mlflow.pyfunc.load_model('models:/{served.name(base)}@champion').predict(array)` (or the "
        f"alias promoted to); HTTP: `mlflow models serve -m models:/{served.name(base)}@champion --env-manager "
        "local`, then POST "
        '`{"inputs": [...]}` to /invocations. '
        f"The other questions: {', '.join(f'`{s.name(base)}`' for s in SERVED if s is not served)}."
    )


def version_description(tags: dict[str, str], precision: str) -> str:
    """A version's description: where it came from and how good it is."""
    config = json.loads(tags["config"])
    short = ", ".join(f"{k}={config[k]}" for k in SEARCHED if k in config)
    return (
        f"From run `{tags['source_run_id']}` of search `{tags['search']}` ({short}; trained in {precision}). "
        f"Validation loss {float(tags['val_loss']):.2f}, test loss {float(tags['test_loss']):.2f} nats/img "
        f"(negative ELBO on the full splits), IWAE bound on test {float(tags['iwae_test']):.2f} "
        f"(K={tags['iw_samples']})."
    )


def log_served(vae: VAE, latent: int, base: str, wanted: list[Served], requirements: list[str]) -> dict[str, str]:
    """Log and register each wanted model in the active run: {registered name: version}."""
    versions = {}
    for served in wanted:
        with warnings.catch_warnings():  # torch.export notes that nn.LSTM sets its flat weights while traced
            warnings.filterwarnings("ignore", "The tensor attributes self.encoder.lstm", UserWarning)
            info = mlflow.pytorch.log_model(
                served.module(vae).eval(),
                name=served.suffix.lstrip("-") or "generator",
                signature=signature(served, latent),
                input_example=input_example(served, latent),
                registered_model_name=served.name(base),
                pip_requirements=requirements,
                serialization_format="pt2",
            )
        versions[served.name(base)] = str(info.registered_model_version)
    return versions
