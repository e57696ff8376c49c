"""docker-compose.yml, checked without a Docker engine: valid against the Compose Specification's
JSON Schema (vendored in tests/data/, see its README), and shaped as docs/contract.md §2 promises
(apache/kafka 4.1.x in KRaft with replication 1, redis, the Vickrey roles built from the Dockerfile,
a bounded headless Locust run)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"

VICKREY_ROLES = {
    "topics": ["topics", "create"],
    "auction": ["auction"],
    "streams": ["streams"],
    "autopilot": ["streams", "autopilot"],
    "api": ["api"],
}
REQUIRED_SERVICES = {"kafka", "redis", *VICKREY_ROLES, "locust"}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *anchor` merge keys the file uses, as Compose does.
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def schema_errors(validator: Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_schema_is_the_compose_spec(validator: Draft202012Validator) -> None:
    assert validator.schema["title"] == "Compose Specification"
    assert "service" in validator.schema["$defs"]


def test_compose_file_is_valid(validator: Draft202012Validator, compose: dict[str, Any]) -> None:
    errors = schema_errors(validator, compose)
    assert not errors, "docker-compose.yml does not follow the Compose Specification:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "kafka", "imagee"), "apache/kafka:4.1.1"),  # unknown key
        (("services", "kafka", "ports"), 9092),  # wrong type
        (("services", "auction", "depends_on", "kafka", "condition"), "service_ready"),  # not in the enum
        (("services", "redis", "healthcheck", "interval"), ["5s"]),  # wrong type
        (("volumes", "kafka data"), {}),  # name not allowed
    ],
)
def test_schema_catches_mistakes(
    validator: Draft202012Validator, compose: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(validator, broken), (
        f"a compose file with {'.'.join(path)} = {value!r} passed the schema"
    )


def test_services_exist(compose: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_kafka_is_apache_kafka_4_1_kraft_single_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.1\.\d+", kafka["image"]), kafka["image"]
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@")
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert any(str(p).split(":")[-2:-1] == ["9092"] for p in kafka["ports"]), "9092 is not published"
    assert kafka["healthcheck"]["test"]


def test_same_kafka_version_as_make_up(compose: dict[str, Any]) -> None:
    """The Docker image and the jars `make up` fetches (ops/kafka/pom.xml) are the same Kafka."""
    pom = (ROOT / "ops" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match, "ops/kafka/pom.xml has no <kafka.version>"
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{match.group(1)}"


def test_redis(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    assert "ping" in " ".join(redis["healthcheck"]["test"]).lower()


@pytest.mark.parametrize("name", sorted(VICKREY_ROLES))
def test_vickrey_roles(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == ROOT / "Dockerfile"
    assert service["command"][: len(VICKREY_ROLES[name])] == VICKREY_ROLES[name]
    env = env_of(service)
    assert env["VICKREY_KAFKA"] == "kafka:9092"
    assert env["VICKREY_REDIS"] == "redis://redis:6379/0"
    deps = service["depends_on"]
    if name == "topics":
        assert deps["kafka"]["condition"] == "service_healthy"
    else:
        assert deps["topics"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


def test_dockerfile_runs_vickrey() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \"?\.(\[load\])?", text, re.M)  # Vickrey, with Locust for the load-test services
    assert re.search(r'^ENTRYPOINT \["vickrey"\]', text, re.M)


def test_dockerfile_copies_every_package() -> None:
    """Every package pyproject.toml installs is in the image (the CLI imports them all at start:
    one left out and every command in the image fails)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"^include = \[(.*)\]$", pyproject, re.M)
    assert include, "pyproject.toml has no [tool.setuptools.packages.find] include list"
    packages = {name.strip().strip('"').rstrip("*") for name in include.group(1).split(",")}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert packages - copied == set(), f"the Dockerfile does not copy {sorted(packages - copied)}"


def test_dependencies_name_real_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_locust_is_headless_and_bounded(compose: dict[str, Any]) -> None:
    locust = compose["services"]["locust"]
    assert locust["entrypoint"] == ["locust"]
    args = locust["command"]
    assert args[args.index("-f") + 1] == "loadtests/locustfile.py"
    assert "--headless" in args
    run_time = args[args.index("--run-time") + 1]
    assert re.fullmatch(r"(\$\{LOCUST_RUN_TIME:-)?\d+[smh]\}?", run_time), run_time
    assert locust.get("restart", "no") == "no"


CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings key by key, `ports` appended, else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if key == "ports" and isinstance(out.get(key), list):
                out[key] = [*out[key], *[p for p in value if p not in out[key]]]
            else:
                out[key] = merged(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def test_the_cluster_override_makes_three_brokers(validator: Draft202012Validator, compose: dict[str, Any]) -> None:
    """docker-compose.cluster.yml (docs/contract.md §9): three KRaft brokers in one quorum,
    everything replicated 3x with min ISR 2, published on 9092-9094, every Vickrey container
    naming all three."""
    override = yaml.safe_load(CLUSTER_FILE.read_text())
    both = merged(compose, override)
    assert schema_errors(validator, both) == []
    services = both["services"]
    brokers = [services[name] for name in ("kafka", "kafka-2", "kafka-3")]
    envs = [env_of(broker) for broker in brokers]
    assert [env["KAFKA_NODE_ID"] for env in envs] == ["1", "2", "3"]
    assert len({env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs}) == 1
    assert envs[0]["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
    assert len({env["CLUSTER_ID"] for env in envs}) == 1
    for env in envs:
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
            assert env[key] == "3", key
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    published = sorted(str(p).split(":")[1] for broker in brokers for p in broker["ports"])
    assert published == ["9092", "9093", "9094"]
    for name in VICKREY_ROLES:
        assert env_of(services[name])["VICKREY_KAFKA"] == "kafka:9092,kafka-2:9092,kafka-3:9092", name
    assert {"kafka-2", "kafka-3"} <= set(services["topics"]["depends_on"])


REDIS_CLUSTER_FILE = ROOT / "docker-compose.redis-cluster.yml"


def test_the_redis_cluster_override_makes_a_cluster(validator: Draft202012Validator, compose: dict[str, Any]) -> None:
    """docker-compose.redis-cluster.yml (docs/contract.md §9): six cluster-enabled nodes with the
    single Redis's persistence, formed once with a replica per primary, and every Vickrey container
    naming them and waiting for the cluster; valid alone and with the three-broker override."""
    override = yaml.safe_load(REDIS_CLUSTER_FILE.read_text())
    both = merged(compose, override)
    assert schema_errors(validator, both) == []
    assert schema_errors(validator, merged(merged(compose, yaml.safe_load(CLUSTER_FILE.read_text())), override)) == []
    services = both["services"]
    nodes = [f"redis-{n}" for n in range(1, 7)]
    for name in nodes:
        args = [str(a) for a in services[name]["command"]]
        options = dict(zip(args[1::2], args[2::2], strict=False))
        assert options["--cluster-enabled"] == "yes" and options["--appendonly"] == "yes", name
        assert options["--cluster-node-timeout"] == "5000" and options["--save"] == "", name
        assert services[name]["volumes"] == [f"{name}-data:/data"]
    create = services["redis-cluster-create"]
    script = " ".join(create["command"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script and "cluster_state:ok" in script
    assert set(create["depends_on"]) == set(nodes)
    for name in VICKREY_ROLES:
        url = env_of(services[name])["VICKREY_REDIS"]
        assert url.startswith("redis+cluster://"), name
        assert sorted(seed.split(":")[0] for seed in url.removeprefix("redis+cluster://").split(",")) == nodes
        if name != "topics":
            assert services[name]["depends_on"]["redis-cluster-create"]["condition"] == "service_completed_successfully"
