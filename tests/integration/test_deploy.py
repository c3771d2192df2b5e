"""deploy/ checked without a container engine: every file parses, images are pinned,
Deployments have gRPC probes and resources, routes send each service to the role that
serves it, Prometheus' config and rules pass promtool, and the dashboard asks only for
metrics a running server exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import runstream
from runstream.server.main import ROLE_SERVICES
from runstream.server.runtime.config import ROLES
from tests.conftest import ROOT, Server, require_tool
from tests.integration.test_operations import scrape

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
SCALED = DEPLOY / "compose" / "scaled.yaml"  # compose.yaml's override for a Redis Cluster and a replica
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "runstream.json"
PINNED = re.compile(r"^[^:@\s]+(:[^:@\s]*\d[^:@\s]*|@sha256:[0-9a-f]{64})$")  # a tag with a version, or a digest


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_file_parses() -> None:
    files = _yaml_files()
    assert len(files) >= 10
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path
    json.loads(DASHBOARD.read_text())


def _scaled() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SCALED.read_text())
    return loaded


def test_the_scaled_shape_runs_every_role_on_the_cluster_and_the_replica() -> None:
    """compose.yaml + scaled.yaml: every role gets the Redis Cluster's URL (whose seeds are
    nodes of the file), acks wait for a replica, and reads go to a replica the file makes."""
    base, scaled = _compose()["services"], _scaled()["services"]
    roles = [name for name, svc in base.items() if "build" in svc]
    assert roles and all(name in scaled for name in roles)
    for name in roles:
        env = scaled[name]["environment"]
        seeds = env["RUNSTREAM_REDIS_URL"].removeprefix("redis+cluster://").split(",")
        assert env["RUNSTREAM_REDIS_URL"].startswith("redis+cluster://")
        assert all(seed.split(":")[0] in scaled for seed in seeds)
        assert env["RUNSTREAM_REDIS_WAIT_REPLICAS"] == "1"
        replica = env["RUNSTREAM_POSTGRES_READ_URL"].split("@")[1].split(":")[0]
        assert replica in scaled and "pg_basebackup" in scaled[replica]["command"][0]
        assert "chmod 0700" in scaled[replica]["command"][0]  # PostgreSQL refuses a data directory others can read
        assert "redis-cluster" in scaled[name]["depends_on"]
    hba = (DEPLOY / "compose" / "pg_hba.conf").read_text()
    assert "hba_file=/etc/postgresql/pg_hba.conf" in scaled["postgres"]["command"][-1]
    assert re.search(r"^host\s+replication\s+all\s+all\s+scram-sha-256$", hba, re.M)
    nodes = [n for n in scaled if re.fullmatch(r"redis-\d", n)]
    assert len(nodes) == 6 and "--cluster-replicas 1" in scaled["redis-cluster"]["command"][0]
    assert "--cluster-enabled" in scaled["redis-1"]["command"]


def test_every_image_has_a_pinned_version() -> None:
    images = [svc["image"] for svc in _compose()["services"].values()]
    images += [svc["image"] for svc in _scaled()["services"].values() if "image" in svc]
    for doc in _k8s_docs():
        if doc["kind"] == "Deployment":
            images += [c["image"] for c in doc["spec"]["template"]["spec"]["containers"]]
    images += re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert len(images) >= 10
    unpinned = [i for i in images if not PINNED.match(i) or i.endswith(":latest")]
    assert not unpinned, f"images without a pinned version: {unpinned}"
    built = [svc.get("image") for svc in _compose()["services"].values() if "build" in svc]
    assert built == ["runstream:0.1.0"] * (len(ROLES) - 1)


def test_every_deployment_has_health_probes_and_resources() -> None:
    deployments = [d for d in _k8s_docs() if d["kind"] == "Deployment"]
    roles = set()
    for dep in deployments:
        for c in dep["spec"]["template"]["spec"]["containers"]:
            grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
            http_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
            assert _flag(c["args"], "--http-port") == str(http_port)
            for probe in ("readinessProbe", "livenessProbe"):  # gRPC health over HTTPS (/healthz)
                expected = {"path": "/healthz", "port": "metrics", "scheme": "HTTPS"}
                assert c[probe]["httpGet"] == expected, (dep["metadata"]["name"], probe)
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), dep["metadata"]["name"]
            assert "memory" in c["resources"]["limits"], dep["metadata"]["name"]
            roles.add(_flag(c["args"], "--role"))
            assert _flag(c["args"], "--port") == str(grpc_port)
    assert roles == set(ROLES) - {"all"}  # every role of a split deployment


def test_the_autoscaler_and_the_service_monitor_point_at_what_exists() -> None:
    docs = _k8s_docs()
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "runstream-ingest" in names
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert len(services) == len(ROLES) - 1  # one per role of a split deployment
    for svc in services:
        assert selector.items() <= svc["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}


def _role_of_service(docs: list[dict[str, Any]], service_name: str) -> str:
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == service_name)
    return str(svc["spec"]["selector"]["app.kubernetes.io/component"])


def test_routes_send_each_service_to_a_role_that_serves_it() -> None:
    docs = _k8s_docs()
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    routed = {}
    for path in ingress["spec"]["rules"][0]["http"]["paths"]:
        service = path["path"].rsplit(".", 1)[1]
        routed[service] = _role_of_service(docs, path["backend"]["service"]["name"])
    assert set(routed) == set(ROLE_SERVICES["all"])
    for service, role in routed.items():
        assert service in ROLE_SERVICES[role], (service, role)

    nginx = (DEPLOY / "compose" / "nginx.conf").read_text()
    compose_routes = dict(re.findall(r"location /runstream\.v1\.(\w+)/ \{ grpc_pass grpcs://(\w+);", nginx))
    assert set(compose_routes) == set(ROLE_SERVICES["all"])
    services = _compose()["services"]
    for service, upstream in compose_routes.items():
        assert service in ROLE_SERVICES[_flag(services[upstream]["command"], "--role")]


def test_compose_roles_agree_on_shards_and_the_scraped_port() -> None:
    services = _compose()["services"]
    runstream = {name: svc for name, svc in services.items() if svc.get("image", "").startswith("runstream:")}
    assert {_flag(s["command"], "--role") for s in runstream.values()} == set(ROLES) - {"all"}
    assert len({_flag(s["command"], "--shards") for s in runstream.values()}) == 1
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    sd = prometheus["scrape_configs"][0]["dns_sd_configs"][0]
    assert set(sd["names"]) == set(runstream)
    assert {_flag(s["command"], "--http-port") for s in runstream.values()} == {str(sd["port"])}
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    k8s_shards = {
        _flag(c["args"], "--shards")
        for d in _k8s_docs()
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert k8s_shards == {_flag(next(iter(runstream.values()))["command"], "--shards")}


@pytest.mark.parametrize(("what", "path"), [("config", "prometheus.yml"), ("rules", "alerts.yml")])
def test_promtool_accepts_the_prometheus_files(what: str, path: str) -> None:
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", what, str(DEPLOY / "compose" / path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_dashboard_asks_only_for_metrics_the_server_exports(server: Server) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 10 and all(p["targets"] for p in dashboard["panels"])
    asked = set(re.findall(r"\brunstream_[a-z_]+", " ".join(exprs)))
    alerts = (DEPLOY / "compose" / "alerts.yml").read_text()
    asked |= set(re.findall(r"\brunstream_[a-z_]+", alerts))
    with runstream.Client(server.target) as client, runstream.QueryClient(server.target) as reader:
        run = client.start_run("dashboard")
        run.log_metric("loss", 0.5, step=0)
        run.end()
        server.wait_points(run.run_id, 1)
        reader.get_metric_history(run.run_id, "loss")  # series of an RPC appear once it is called
    _, samples = scrape(server)
    exported = {name for name, _ in samples}
    assert ("QueryService", "GetMetricHistory") in {
        (dict(labels).get("service"), dict(labels).get("rpc"))
        for name, labels in samples
        if name == "runstream_rpc_latency_seconds_count"
    }
    assert not asked - exported, f"not exported by the server: {sorted(asked - exported)}"
    cells = set()  # panels do not overlap
    for p in dashboard["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_the_image_installs_the_server_extra() -> None:
    """Every role runs `runstream server`, which needs `runstream[server]` (the SDK alone lacks it)."""
    installs = re.findall(r"pip install [^&\n]*", (DEPLOY / "Dockerfile").read_text())
    assert installs and all("'.[server]'" in line for line in installs), installs


def test_every_deployment_runs_with_tokens_and_tls() -> None:
    docs = _k8s_docs()
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert secrets["runstream-tls"]["type"] == "kubernetes.io/tls"
    assert "RUNSTREAM_ADMIN_TOKEN" in secrets["runstream"]["stringData"]
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        mounted = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"]}
        for c in spec["containers"]:
            assert "--auth" in c["args"], dep["metadata"]["name"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for flag, file in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
                folder, name = _flag(c["args"], flag).rsplit("/", 1)
                assert name == file and mounted[mounts[folder]] == "runstream-tls", (dep["metadata"]["name"], flag)
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    assert ingress["spec"]["tls"][0]["secretName"] == "runstream-tls"
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https"

    compose = _compose()
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("runstream:"):
            assert "--auth" in svc["command"] and "--tls-cert" in svc["command"], name
            assert svc["environment"]["RUNSTREAM_AUTH"] == "1"
    nginx = (DEPLOY / "compose" / "nginx.conf").read_text()
    assert "listen 50051 ssl;" in nginx and "grpc_pass grpc://" not in nginx
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["scheme"] == "https"
    assert "--auth" in re.findall(r"^CMD (.+)$", (DEPLOY / "Dockerfile").read_text(), re.M)[0]
