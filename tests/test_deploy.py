"""The container recipe and the KubeRay manifests, checked without a cluster or a registry.

No base image can be pulled here, so the Dockerfile is linted (hadolint), not built. The manifests are
validated against KubeRay's own CRD schemas (vendored in deploy/kuberay/schema/, descriptions stripped),
made strict as `kubectl apply --validate=strict` is: an unknown field is an error, not silently pruned.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from search.config import load
from search.parser import build_parser
from tests.helpers import REPO

KUBERAY = REPO / "deploy" / "kuberay"


def strict(schema: Any) -> Any:
    """No fields but the schema's own wherever it lists them (Kubernetes' strict field validation)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
        if "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
        return schema
    return [strict(v) for v in schema] if isinstance(schema, list) else schema


def validator(kind: str) -> jsonschema.Validator:
    schema = strict(json.loads((KUBERAY / "schema" / f"{kind}.v1.json").read_text()))
    return jsonschema.Draft7Validator(schema)


def manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "raycluster"), ("rayjob.yaml", "rayjob")])
def test_the_manifests_are_valid_against_kuberays_crd_schema(name: str, kind: str) -> None:
    doc = manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"].lower() == kind
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(kind).iter_errors(doc)]
    assert errors == []


def test_the_validation_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    check = validator("raycluster")
    doc = manifest("raycluster.yaml")
    typo = copy.deepcopy(doc)
    typo["spec"]["workerGroupSpec"] = typo["spec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e.message for e in check.iter_errors(typo))
    wrong = copy.deepcopy(doc)
    wrong["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    assert any(list(e.absolute_path)[-1] == "replicas" for e in check.iter_errors(wrong))
    pod = copy.deepcopy(doc)
    pod["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert list(check.iter_errors(pod))  # the pod template is checked too, to its containers' fields


def test_the_rayjob_runs_a_search_that_starts_or_resumes_on_the_object_store() -> None:
    """A retried RayJob reruns its entrypoint: it must parse, name a valid config, and resume if it can."""
    job = manifest("rayjob.yaml")["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[0] == "vaesearch" and job["backoffLimit"] >= 1
    args = build_parser().parse_args(words[1:])
    assert args.resume_if_exists and args.address == "auto" and args.storage_path.startswith("s3://")
    assert args.tracking_uri == "$MLFLOW_TRACKING_URI"  # the head's shell expands these from the pod's env
    assert args.study_storage == "$OPTUNA_STORAGE"  # an object-store search keeps its study in a database
    assert load(REPO / args.config).resources.gpus > 0  # trials on the GPU workers
    cluster = manifest("raycluster.yaml")["spec"]
    assert job["rayClusterSpec"] == cluster  # one cluster shape, interactive or per job


def test_the_dockerfile_passes_hadolint_and_installs_with_the_suites_versions_as_a_non_root_user() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), "--failure-threshold", "info", "Dockerfile"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "--constraint /tmp/constraints.txt ." in text and "USER 1000" in text
    pins = {line.split("==")[0] for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}  # fmt: skip
    assert {"torch", "torchvision", "ray", "mlflow", "optuna"} <= pins
    images = {c["image"] for doc in (manifest("raycluster.yaml"),) for c in _containers(doc["spec"])}
    assert images == {"REGISTRY/vaesearch:cpu", "REGISTRY/vaesearch:cuda"}


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]
