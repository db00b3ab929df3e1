"""Deployment files (deploy/, Procfile) agree with the app: probes hit routes it serves, the image
runs the documented command, every variable they set is a setting the bot reads.

No Docker or Kubernetes needed: the files are parsed, and the app is built (not started) to read
its router.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import fields
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, Settings, load_settings
from bot.policy import load_policy_text
from bot.policy.loader import is_policy_file
from bot.service.app import create_app
from bot.service.policy_store import PolicyStore

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
REGENERATE = (
    "kubectl create configmap gitlab-status-bot-policies --from-file=policies/ "
    "--dry-run=client -o yaml > deploy/k8s/policies-configmap.yaml"
)


# -- what the app serves and reads ------------------------------------------------------------


@cache
def _routes() -> frozenset[tuple[str, str]]:
    settings = Settings(
        gitlab_url="http://127.0.0.1:9", gitlab_token="unused", policy_dir=ROOT / "policies"
    )
    store = PolicyStore(settings.policy_dir)
    store.load()
    app = create_app(settings, store)
    return frozenset(
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
    )


def served(path: str) -> bool:
    return ("GET", path) in _routes()


_BASE_ENV = {"GITLAB_URL": "https://gitlab.example.com", "GITLAB_TOKEN": "probe-token-1234"}


def reads_setting(name: str) -> bool:
    """Whether load_settings reads `name`: setting it to a probe value changes the settings or
    is rejected with a message naming it."""
    env = dict(_BASE_ENV)
    if name == "GITLAB_TOKEN_FILE":
        env.pop("GITLAB_TOKEN")  # the token wins over the file
    baseline = load_settings(_BASE_ENV)
    try:
        probed = load_settings({**env, name: "__probe__"})
    except ConfigError as exc:
        return name in str(exc)
    return probed != baseline


def procfile_command() -> list[str]:
    processes = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    return shlex.split(processes["web"])


# -- parsing ----------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return [*sorted(K8S.glob("*.yaml")), COMPOSE]


@cache
def k8s_docs() -> tuple[dict[str, Any], ...]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(docs)


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind]
    if name is not None:
        found = [d for d in found if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return k8s("Deployment")["spec"]["template"]["spec"]


def bot_container() -> dict[str, Any]:
    [container] = pod_spec()["containers"]
    return container


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    instructions = [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in lines
        if line.strip()
    ]
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def docker(instruction: str) -> list[str]:
    return [args for word, args in dockerfile() if word == instruction]


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in docker("ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def compose_bot() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]["bot"]


def compose_env() -> Mapping[str, str]:
    env = compose_bot()["environment"]
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def container_env_names() -> list[str]:
    return [item["name"] for item in bot_container().get("env", [])]


def container_env_value(name: str) -> str | None:
    return next((e.get("value") for e in bot_container()["env"] if e["name"] == name), None)


def not_python_runtime(name: str) -> bool:
    return name != "PATH" and not name.startswith("PYTHON")


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.name)
def test_every_manifest_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path} holds no YAML document"
    if path.parent == K8S:
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"].get("name"), path


def test_the_kubernetes_set_is_complete() -> None:
    kinds = {d["kind"] for d in k8s_docs()}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
    } <= kinds


def test_probes_point_at_endpoints_the_app_serves() -> None:
    container = bot_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert served(liveness["path"]) and served(readiness["path"])
    # Liveness must not depend on GitLab (a GitLab outage must not restart the bot): /healthz.
    assert (liveness["path"], readiness["path"]) == ("/healthz", "/readyz")
    for probe in (liveness, readiness):
        port = probe["port"]
        assert (ports[port] if isinstance(port, str) else port) in ports.values()
    listen = int(container_env_value("PORT") or Settings.port)
    assert list(ports.values()) == [listen]
    assert served("/healthz") and not served("/no-such-endpoint")  # the check can fail


def test_the_image_runs_the_documented_command() -> None:
    [cmd] = docker("CMD")
    assert json.loads(cmd) == procfile_command() == ["python", "-m", "bot", "serve"]
    assert bot_container()["command"] == procfile_command()
    assert "command" not in compose_bot()  # the image's CMD


def test_dockerfile_healthcheck_user_port_volume_and_policies() -> None:
    [healthcheck] = docker("HEALTHCHECK")
    match = re.search(r"http://[^/'\"]+(/[\w/-]*)", healthcheck)
    assert match and served(match[1]), healthcheck
    assert "curl" not in healthcheck and "urllib" in healthcheck
    env = docker_env()
    [expose] = docker("EXPOSE")
    assert int(expose) == int(env["PORT"]) == Settings.port
    [user] = docker("USER")
    assert user.split(":")[0] not in ("0", "root")
    [volume] = docker("VOLUME")
    assert json.loads(volume) == [env["STATE_DIR"]]
    assert env["LOG_FORMAT"] == "json"
    copies = [args.split() for args in docker("COPY") if not args.startswith("--from")]
    assert ["policies", env["POLICY_DIR"]] in copies
    [base] = docker("FROM")
    version = re.fullmatch(r"python:3\.(\d+)-slim(\S*)", base.split()[0])
    assert version and int(version[1]) >= 11, base


def test_every_variable_set_is_a_setting_the_bot_reads() -> None:
    assert not reads_setting("NOT_A_BOT_SETTING")  # the probe can tell
    names = {
        *filter(not_python_runtime, docker_env()),
        *compose_env(),
        *container_env_names(),
    }
    unknown = sorted(name for name in names if not reads_setting(name))
    assert not unknown, f"set in deploy/ but not read by bot/config.py: {unknown}"


def test_kubernetes_objects_reference_each_other() -> None:
    spec = pod_spec()
    deployment = k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = k8s("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"] for p in bot_container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    secret = k8s("Secret")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for item in bot_container()["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret_keys
    assert {"GITLAB_TOKEN", "WEBHOOK_SECRET", "STATUS_CHECK_SECRET", "DATABASE_URL"} <= secret_keys
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in bot_container()["volumeMounts"]}
    policies = volumes[mounts[container_env_value("POLICY_DIR")]]
    k8s("ConfigMap", policies["configMap"]["name"])
    state = volumes[mounts[container_env_value("STATE_DIR")]]
    assert "emptyDir" in state  # every replica's state is in PostgreSQL (DATABASE_URL)
    budget = k8s("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_deployment_rolls_without_downtime() -> None:
    """README "Running more than one": at least 2 replicas, RollingUpdate that never drops
    below them, a PodDisruptionBudget, DATABASE_URL from the Secret, and readiness that turns
    off (one failed probe) well before the pod stops serving (DRAIN_DELAY), all inside the
    termination grace period."""
    deployment = k8s("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert k8s("PodDisruptionBudget")["spec"]["minAvailable"] >= 1
    [database] = [e for e in bot_container()["env"] if e["name"] == "DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL"
    readiness = bot_container()["readinessProbe"]
    noticed = readiness["periodSeconds"] * readiness["failureThreshold"]
    drain = float(container_env_value("DRAIN_DELAY") or 0)
    assert drain > noticed
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= drain + Settings.shutdown_deadline + 15  # + handing back, closing
    [spread] = pod_spec()["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_pod_runs_unprivileged_with_limits() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    container = bot_container()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_the_policies_configmap_matches_policies_folder() -> None:
    data = k8s("ConfigMap", "gitlab-status-bot-policies")["data"]
    shipped = {p.name: p.read_text() for p in (ROOT / "policies").iterdir() if p.is_file()}
    assert data == shipped, f"deploy/k8s/policies-configmap.yaml is stale; run: {REGENERATE}"
    for name, text in data.items():
        if is_policy_file(Path(name)):
            load_policy_text(text, name)


def test_compose_runs_the_bot_beside_gitlab_ee() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["gitlab"]["image"].startswith("gitlab/gitlab-ee:")
    assert services["postgres"]["image"].startswith("postgres:")
    assert compose_env()["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in compose_env()["DATABASE_URL"]
    bot = services["bot"]
    build = bot["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert any(str(p).split(":")[-1] == str(Settings.port) for p in bot["ports"])
    env = compose_env()
    state_mounts = [v for v in bot["volumes"] if v.split(":")[1] == env["STATE_DIR"]]
    assert (
        state_mounts
        and state_mounts[0].split(":")[0] in yaml.safe_load(COMPOSE.read_text())["volumes"]
    ), "the state dir must be a named volume"
    assert env["STATE_DIR"] == docker_env()["STATE_DIR"]


def _package_data_globs() -> Iterator[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package, globs in config["tool"]["setuptools"].get("package-data", {}).items():
        for glob in globs:
            yield f"{package.replace('.', '/')}/{glob}"


def test_the_installed_package_carries_its_data_files() -> None:
    """The image installs with `pip install .`: files outside *.py need package-data."""
    data_files = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "bot").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    ]
    globs = list(_package_data_globs())
    missing = [f for f in data_files if not any(fnmatch(f, g) for g in globs)]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_settings_have_defaults_for_a_single_instance() -> None:
    """The manifests rely on these defaults when they do not set a variable."""
    defaults = {f.name: f.default for f in fields(Settings)}
    assert defaults["port"] == 8080 and defaults["host"] == "0.0.0.0"
