"""deploy/k8s manifests, validated statically (no cluster here).

- Core kinds: ``kubernetes-validate`` (PyPI, pinned in pyproject's dev extras), strict mode (unknown fields
  are errors), against the Kubernetes OpenAPI schemas it ships for ``K8S_VERSION``.
- KEDA ScaledObject: not in the core schemas; validated against ``tests/data/keda-scaledobject-v1alpha1.schema.json``
  (generated from the KEDA v2.16 CRD models of ``cloudcoil-models-keda``, see ``tests/data/gen_keda_schema.py``),
  plus explicit checks of the kafka trigger's metadata, which the CRD leaves as a free string map.
- kustomization.yaml: no kustomize binary here; its resource list and image names are checked explicitly.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33.0"
KEDA_SCHEMA = ROOT / "tests" / "data" / "keda-scaledobject-v1alpha1.schema.json"
ROLES = ("uploader", "aggregator")


@cache
def _docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((path.name, doc))
    return tuple(out)


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return copy.deepcopy(found[0])


def _core_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in _docs() if d["kind"] not in ("ScaledObject", "Kustomization")]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _partitions() -> int:
    args = _one("Job", "runstream-topics")["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(args[args.index("--partitions") + 1])


def _keda_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(KEDA_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(doc)]


# --- schema validation -------------------------------------------------------------------------------


def test_validator_is_the_pinned_one_and_knows_the_target_version() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"kubernetes-validate=={kubernetes_validate.__version__}"' in pyproject
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("item", _core_docs(), ids=lambda i: f"{i[0]}:{i[1]['kind']}/{i[1]['metadata']['name']}")
def test_core_manifests_are_valid_for_the_target_kubernetes_version(item: tuple[str, dict[str, Any]]) -> None:
    _, doc = item
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "breakage",
    ["misspelt-probe", "replicas-as-text", "port-out-of-type", "pdb-unknown-field"],
)
def test_kubernetes_validate_rejects_broken_copies(breakage: str) -> None:
    if breakage == "pdb-unknown-field":
        doc = _one("PodDisruptionBudget", "runstream-uploader")
        doc["spec"]["maxUnavaliable"] = 1
    else:
        doc = _one("Deployment", "runstream-uploader")
        container = doc["spec"]["template"]["spec"]["containers"][0]
        if breakage == "misspelt-probe":
            container["livenesProbe"] = container.pop("livenessProbe")
        elif breakage == "replicas-as-text":
            doc["spec"]["replicas"] = "two"
        else:
            container["ports"][0]["containerPort"] = {"port": 8080}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_scaled_object_is_valid_against_the_keda_crd_schema() -> None:
    errors = _keda_errors(_one("ScaledObject", "runstream-uploader"))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [("lag-as-number", "lagThreshold"), ("no-target", "scaleTargetRef"), ("unknown-field", "maxReplicas")],
)
def test_keda_schema_rejects_broken_copies(breakage: str, needle: str) -> None:
    doc = _one("ScaledObject", "runstream-uploader")
    if breakage == "lag-as-number":
        doc["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000  # trigger metadata values are strings
    elif breakage == "no-target":
        del doc["spec"]["scaleTargetRef"]
    else:
        doc["spec"]["maxReplicas"] = 3
    errors = _keda_errors(doc)
    assert any(needle in e for e in errors), errors


# --- meaning -----------------------------------------------------------------------------------------


def test_scaled_object_scales_the_uploader_on_its_kafka_consumer_lag() -> None:
    so = _one("ScaledObject", "runstream-uploader")["spec"]
    config = _one("ConfigMap", "runstream-config")["data"]
    assert so["scaleTargetRef"]["name"] == "runstream-uploader"
    assert so["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    _one("Deployment", so["scaleTargetRef"]["name"])
    (trigger,) = so["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config["RUNSTREAM_UPLOADER_GROUP"]
    assert meta["bootstrapServers"] == config["RUNSTREAM_KAFKA_BOOTSTRAP"]
    assert int(meta["lagThreshold"]) > 0
    assert int(meta.get("activationLagThreshold", "0")) < int(meta["lagThreshold"])
    assert meta.get("allowIdleConsumers", "false") == "false"
    assert 1 <= so["minReplicaCount"] <= so["maxReplicaCount"] <= _partitions(), "replicas must stay <= partitions"


@pytest.mark.parametrize("role", ROLES)
def test_deployments_probe_run_as_non_root_and_take_settings_from_config_and_secret(role: str) -> None:
    dep = _one("Deployment", f"runstream-{role}")
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["args"] == ["run", "--role", role]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == 8080
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert "memory" in c["resources"][kind], f"{role}: no memory {kind}"
    assert "cpu" in c["resources"]["requests"]
    refs = {(k, v["name"]) for src in c["envFrom"] for k, v in src.items()}
    assert refs == {("configMapRef", "runstream-config"), ("secretRef", "runstream-secrets")}
    grace = float(_one("ConfigMap", "runstream-config")["data"]["RUNSTREAM_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > grace
    # pod labels are what the selector, the PDB and (for the aggregator) the Service select on
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget", f"runstream-{role}")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_image_user_is_the_one_kubernetes_runs_as() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    user = [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("USER ")][-1]
    for role in ROLES:
        ctx = _one("Deployment", f"runstream-{role}")["spec"]["template"]["spec"]["securityContext"]
        assert user == f"{ctx['runAsUser']}:{ctx['runAsGroup']}"


def test_several_aggregators_share_postgres_state_and_stay_within_partitions() -> None:
    replicas = _one("Deployment", "runstream-aggregator")["spec"]["replicas"]
    config = _one("ConfigMap", "runstream-config")["data"]
    secret = _one("Secret", "runstream-secrets")["stringData"]
    if replicas > 1:
        assert config["RUNSTREAM_STATE_BACKEND"] == "postgres"
        assert secret["RUNSTREAM_STATE_POSTGRES_DSN"].startswith("postgresql://")
    assert replicas <= _partitions()


def test_service_exposes_the_aggregator_http_port() -> None:
    svc = _one("Service", "runstream-api")["spec"]
    labels = _one("Deployment", "runstream-aggregator")["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items()
    assert svc["ports"][0]["targetPort"] == "http"


def test_config_and_secret_name_only_known_settings_and_the_secret_holds_only_placeholders() -> None:
    from service.config import _SECRET_FIELDS, Settings

    known = {f"RUNSTREAM_{n.upper()}" for n in Settings.model_fields}
    secret_names = {f"RUNSTREAM_{n.upper()}" for n in _SECRET_FIELDS} | {
        "RUNSTREAM_STATE_POSTGRES_DSN",
        "RUNSTREAM_KAFKA_SASL_USERNAME",
    }
    config = _one("ConfigMap", "runstream-config")["data"]
    secret = _one("Secret", "runstream-secrets")["stringData"]
    assert set(config) <= known, set(config) - known
    assert set(secret) <= known, set(secret) - known
    assert not set(config) & secret_names, "secrets belong in the Secret"
    assert config["RUNSTREAM_HTTP_HOST"] == "0.0.0.0"
    for key, value in secret.items():
        assert "REPLACE_ME" in value, f"{key} is not a placeholder"


def test_kustomization_lists_every_manifest_and_retags_the_image() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kust["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files)
    image_names = {n["name"] for n in kust["images"]}
    for _, doc in _docs():
        if doc["kind"] in ("Deployment", "Job"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                assert c["image"].split(":")[0] in image_names, c["image"]
                assert not c["image"].endswith(":latest")
