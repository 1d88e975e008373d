"""The Helm chart, offline: lint, render with the default and production-like values, validate
every object against the Kubernetes schemas, and check what the rendered objects promise
(security, resources, probes, secrets, Redis, autoscaling). helm is fetched and pinned by
deploy/helm/chartcheck.py; no cluster is involved."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy.helm import chartcheck as cc

SERVING = ("gateway", "retrieval", "ranking", "events")
STATELESS = ("gateway", "retrieval", "ranking")
GRPC = {"retrieval": (50051, "recsys.v1.RetrievalService"), "ranking": (50052, "recsys.v1.RankingService")}


@pytest.fixture(scope="module")
def helm() -> Path:
    return cc.ensure_helm()


def render(helm: Path, args: list[str]) -> list[dict]:
    res = cc.template(helm, args)
    assert res.returncode == 0, res.output
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def render_fails(helm: Path, args: list[str]) -> str:
    res = cc.template(helm, args)
    assert res.returncode != 0, "rendering was expected to fail"
    return res.stderr


@pytest.fixture(scope="module")
def default(helm) -> list[dict]:
    return render(helm, cc.default_args())


@pytest.fixture(scope="module")
def production(helm) -> list[dict]:
    return render(helm, cc.production_args())


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def deployment(docs: list[dict], component: str) -> dict:
    return by_kind(docs, "Deployment")[f"recsys-{component}"]


def containers(pod_owner: dict) -> list[dict]:
    spec = pod_owner["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def configmap(docs: list[dict]) -> dict[str, str]:
    return by_kind(docs, "ConfigMap")["recsys"]["data"]


# ------------------------------------------------------------------------------- the tools


@pytest.mark.parametrize("values", ["default", "production"])
def test_helm_lint_strict(helm, values):
    res = cc.lint(helm, cc.default_args() if values == "default" else cc.production_args())
    assert res.returncode == 0, res.output
    assert "0 chart(s) failed" in res.output


@pytest.mark.parametrize("kube_version", cc.KUBE_VERSIONS)
@pytest.mark.parametrize("values", ["default", "production"])
def test_rendered_objects_pass_kubernetes_validate_strict(helm, tmp_path, values, kube_version):
    args = cc.default_args() if values == "default" else cc.production_args()
    rendered = cc.template(helm, args, kube_version=kube_version)
    assert rendered.returncode == 0, rendered.output
    path = tmp_path / f"{values}.yaml"
    path.write_text(rendered.stdout)
    res = cc.kubernetes_validate(path, kube_version)
    assert res.returncode == 0, res.output
    n_objects = sum(1 for d in yaml.safe_load_all(rendered.stdout) if d)
    passed = [line for line in res.output.splitlines() if " passed for resource " in line]
    assert len(passed) == n_objects, res.output  # every object was checked, none skipped


def test_the_validator_is_strict_about_unknown_fields(helm, tmp_path):
    """Proof the check can fail: a misspelt field in a rendered Deployment is rejected."""
    docs = render(helm, cc.default_args())
    dep = deployment(docs, "ranking")
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50052}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(dep))
    res = cc.kubernetes_validate(path, cc.KUBE_VERSIONS[0])
    assert res.returncode != 0 and "grcp" in res.output, res.output


# ------------------------------------------------------------------------------- the objects


@pytest.mark.parametrize("values", ["default", "production"])
def test_every_container_is_locked_down_and_sized(request, values):
    docs = request.getfixturevalue(values)
    owners = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert {o["metadata"]["name"] for o in owners if o["kind"] == "Deployment"} == {f"recsys-{c}" for c in SERVING}
    for owner in owners:
        pod = owner["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's `app` user
        assert pod["automountServiceAccountToken"] is False
        mounts_tmp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        assert "tmp" in mounts_tmp
        for c in containers(owner):
            where = f"{owner['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where


def test_defaults_are_sized_for_ml100k_and_production_for_1m(default, production):
    req = {c: deployment(default, c)["spec"]["template"]["spec"]["containers"][0]["resources"] for c in SERVING}
    assert req["retrieval"]["requests"] == {"cpu": "200m", "memory": "512Mi"}
    assert req["ranking"]["requests"]["cpu"] == "250m"
    prod = {c: deployment(production, c)["spec"]["template"]["spec"]["containers"][0]["resources"] for c in SERVING}
    assert prod["retrieval"]["requests"] == {"cpu": "600m", "memory": "1Gi"}
    assert prod["retrieval"]["limits"]["memory"] == "2Gi"
    assert prod["gateway"]["requests"]["cpu"] == "600m"


@pytest.mark.parametrize("values", ["default", "production"])
def test_probes(request, values):
    docs = request.getfixturevalue(values)
    for component, (port, service) in GRPC.items():
        main = deployment(docs, component)["spec"]["template"]["spec"]["containers"][0]
        assert main["readinessProbe"]["grpc"] == {"port": port, "service": service}
        assert main["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert main["startupProbe"]["httpGet"]["port"] == "metrics"
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports["grpc"] == port
        assert main["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    gw = deployment(docs, "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gw["startupProbe"]["httpGet"]["path"] == "/readyz"  # dependencies SERVING before it joins
    assert gw["readinessProbe"]["httpGet"]["path"] == "/healthz"  # then fallbacks keep it in rotation
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ev = deployment(docs, "events")["spec"]["template"]["spec"]["containers"][0]
    assert ev["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment(docs, "events")["spec"]["strategy"] == {"type": "Recreate"}  # one consumer at a time


@pytest.mark.parametrize("values", ["default", "production"])
def test_hpa_targets_the_three_stateless_deployments_and_pdbs_cover_all(request, values):
    docs = request.getfixturevalue(values)
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    deployments = by_kind(docs, "Deployment")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {f"recsys-{c}" for c in STATELESS}
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["minReplicas"] >= 2  # the PDB's maxUnavailable 1 leaves one serving
        assert "replicas" not in deployments[target["name"]]["spec"]  # the HPA owns the count
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for c in SERVING:
        selector = pdbs[f"recsys-{c}"]["spec"]["selector"]["matchLabels"]
        assert selector == deployments[f"recsys-{c}"]["spec"]["selector"]["matchLabels"]


def test_gateway_reaches_the_grpc_services_through_headless_services(default):
    services = by_kind(default, "Service")
    data = configmap(default)
    for component, (port, _) in GRPC.items():
        headless = services[f"recsys-{component}-headless"]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == deployment(default, component)["spec"]["selector"]["matchLabels"]
        key = f"GATEWAY_{component.upper()}_ADDR"
        assert data[key] == f"dns:///recsys-{component}-headless.recsys.svc:{port}"
    assert services["recsys-gateway"]["spec"]["type"] == "ClusterIP"


def test_admin_token_comes_from_a_secret(default, production):
    for docs, secret in ((default, "recsys-admin-token"), (production, "recsys-admin")):
        gw = deployment(docs, "gateway")["spec"]["template"]["spec"]["containers"][0]
        ref = env(gw)["GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret
        assert "GATEWAY_ADMIN_TOKEN" not in configmap(docs)
    assert "recsys-admin-token" in by_kind(default, "Secret")
    assert not by_kind(production, "Secret")  # existingSecret: the chart creates none


def test_rendering_without_an_admin_token_fails(helm):
    base = ["--set", "redis.url=redis://redis:6379/0"]
    err = render_fails(helm, base)
    assert "gateway.adminToken: set gateway.adminToken.existingSecret" in err
    err = render_fails(helm, [*cc.production_args(), "--set", "gateway.adminToken.existingSecret="])
    assert "the chart ships no default token" in err
    err = render_fails(helm, [*base, "--set", "gateway.adminToken.value=short"])
    assert "shorter than 16 characters" in err


def test_redis_url_standalone_cluster_and_secret(helm, default, production):
    assert configmap(default)["REDIS_URL"] == "redis://redis-master:6379/0"
    token = ["--set", f"gateway.adminToken.value={cc.dev_token()}"]
    docs = render(helm, [*token, "--set", "redis.mode=cluster",
                         "--set", "redis.nodes={r-0.redis:6379,r-1.redis:6379,r-2.redis:6379}"])
    assert configmap(docs)["REDIS_URL"] == "redis+cluster://r-0.redis:6379,r-1.redis:6379,r-2.redis:6379"
    # production: the URL (password inside) only from the Secret, in every Python container
    assert "REDIS_URL" not in configmap(production)
    for c in SERVING:
        main = deployment(production, c)["spec"]["template"]["spec"]["containers"][0]
        assert env(main)["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "recsys-redis", "key": "redis-url"}
    job = next(iter(by_kind(default, "Job").values()))
    assert "REDIS_URL" not in env(job["spec"]["template"]["spec"]["containers"][0])  # from the ConfigMap
    assert "required with redis.mode=standalone" in render_fails(helm, token)
    assert "redis.nodes is required" in render_fails(helm, [*token, "--set", "redis.mode=cluster"])
    assert "must start with redis://" in render_fails(helm, [*token, "--set", "redis.url=r-0:6379"])
    assert "redis.mode must be standalone or cluster" in render_fails(helm, [*token, "--set", "redis.mode=sentinel"])


def test_bundle_from_claims_and_the_offline_job(default):
    jobs = by_kind(default, "Job")
    assert list(jobs) == ["recsys-offline-1"]
    job = jobs["recsys-offline-1"]["spec"]["template"]["spec"]
    assert "/app/deploy/offline-job.sh" in job["containers"][0]["command"][-1]
    writable = {m["mountPath"] for m in job["containers"][0]["volumeMounts"] if not m.get("readOnly")}
    assert {"/app/artifacts", "/app/data"} <= writable
    claims = by_kind(default, "PersistentVolumeClaim")
    assert set(claims) == {"recsys-artifacts", "recsys-data"}
    assert all(c["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims.values())
    for c in SERVING:
        pod = deployment(default, c)["spec"]["template"]["spec"]
        init = pod["initContainers"][0]
        assert init["command"][2] == "wait" and "/app/data/.recsys-materialized" in init["command"]
        main_mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert main_mounts["/app/artifacts"]["readOnly"] is True
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["artifacts"]["persistentVolumeClaim"]["claimName"] == "recsys-artifacts"
    assert configmap(default)["ARTIFACTS_DIR"] == "/app/artifacts/current"


def test_bundle_from_a_url_is_fetched_and_verified_by_the_init_container(production, helm):
    assert not by_kind(production, "Job") and not by_kind(production, "PersistentVolumeClaim")
    script = by_kind(production, "ConfigMap")["recsys-scripts"]["data"]["fetch_bundle.py"]
    assert script == cc.CHART.joinpath("files", "fetch_bundle.py").read_text().rstrip("\n")
    for c in SERVING:
        pod = deployment(production, c)["spec"]["template"]["spec"]
        init = pod["initContainers"][0]
        assert init["command"][:3] == ["python", "/scripts/fetch_bundle.py", "fetch"]
        assert env(init)["BUNDLE_URL"]["value"].startswith("https://")
        assert env(init)["REGISTRY_URL"]["value"].endswith("registry.db")
        vols = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in vols["artifacts"] and "emptyDir" in vols["data"]
        assert {m["mountPath"]: m.get("readOnly") for m in init["volumeMounts"]}["/app/artifacts"] is False
    args = cc.production_args()
    assert "needs bundle.registryUrl" in render_fails(helm, [*args, "--set", "bundle.registryUrl="])
    assert "offlineJob.enabled=true needs bundle.source=volume" in render_fails(helm, [*args, "--set", "offlineJob.enabled=true"])
    assert "needs bundle.url" in render_fails(helm, [*args, "--set", "bundle.url="])


def test_settings_are_in_the_configmap_and_a_change_rolls_the_pods(helm, default):
    data = configmap(default)
    assert data["RETRIEVAL_HOST"] == data["RANKING_HOST"] == data["GATEWAY_HOST"] == "0.0.0.0"
    assert data["FEAST_DATA_DIR"] == "/app/data/feast" and data["HOME"] == "/tmp"
    for c in SERVING:
        main = deployment(default, c)["spec"]["template"]["spec"]["containers"][0]
        assert main["envFrom"] == [{"configMapRef": {"name": "recsys"}}]
    before = deployment(default, "ranking")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    changed = render(helm, [*cc.default_args(), "--set", "config.GATEWAY_CACHE_TTL_S=0"])
    assert configmap(changed)["GATEWAY_CACHE_TTL_S"] == "0"
    assert deployment(changed, "ranking")["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != before
