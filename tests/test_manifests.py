"""cluster/: every manifest parses and agrees with jobs/ (entrypoints exist and accept their flags
and settings), images and resources are set, the nightly job cannot overlap, no credentials."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from s2s import cli
from s2s.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.rglob("*.yaml"))
# Access keys, secret keys and tokens written out; references (secretKeyRef, roles) are fine.
SECRETS = re.compile(
    r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S|"
    r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}|password\s*:",
    re.IGNORECASE,
)


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_entrypoint(command: list[str]) -> None:
    """The command runs a job that exists, with flags and settings that job accepts."""
    script = next(word for word in command if word.endswith(".py"))
    name = Path(script).stem
    assert (REPO / "jobs" / f"{name}.py").exists(), script
    assert script.endswith(f"jobs/{name}.py")
    args = command[command.index(script) + 1 :]
    if name == "pipeline":
        load_job("pipeline").config_from_args(args)  # raises on an unknown flag or key
        return
    parsed = cli.build_parser().parse_args([name, *args])  # SystemExit on an unknown flag
    if name == "train":
        cfg = cli._train_config_from_args(parsed)
        assert isinstance(cfg, TrainConfig)
    else:
        configs = {"translate": cli.TranslateConfig, "evaluate": cli.EvaluateConfig,
                   "prepare": cli.PrepareConfig}  # fmt: skip
        cli._config_from_args(configs[name], parsed).validate()


def containers(doc: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "containers":
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_manifest_parses_and_holds_no_credentials(path):
    assert documents(path)
    assert not SECRETS.search(path.read_text()), f"{path} seems to hold a credential"


def test_kuberay_manifests_run_real_jobs_with_images_and_resources():
    kinds = {}
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in documents(path):
            kinds.setdefault(doc["kind"], []).append(doc)
            for container in containers(doc):
                assert container.get("image"), f"{path}: container without an image"
                limits = container.get("resources", {}).get("limits", {})
                assert limits.get("cpu") and limits.get("memory"), f"{path}: no cpu/memory limits"
    assert set(kinds) >= {"RayCluster", "RayJob", "CronJob"}
    cluster = kinds["RayCluster"][0]["spec"]
    gpu_groups = [
        g for g in cluster["workerGroupSpecs"]
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers(g))
    ]  # fmt: skip
    assert gpu_groups and all(g["minReplicas"] == 0 for g in gpu_groups)  # autoscaled from zero
    jobs = kinds["RayJob"]
    assert {Path(shlex.split(j["spec"]["entrypoint"])[1]).stem for j in jobs} >= {
        "train",
        "translate",
    }
    for job in jobs:
        check_entrypoint(shlex.split(job["spec"]["entrypoint"]))
        assert (
            job["spec"]["clusterSelector"]["ray.io/cluster"]
            == kinds["RayCluster"][0]["metadata"]["name"]
        )
    (cron,) = kinds["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (submit,) = containers(cron)
    command = submit["command"]
    assert command[:3] == ["ray", "job", "submit"]
    check_entrypoint(command[command.index("--") + 1 :])


def test_aws_launcher_config():
    (config,) = documents(CLUSTER / "aws.yaml")
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert gpu and all(n["min_workers"] == 0 and n["max_workers"] > 0 for n in gpu)
    for node in nodes.values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"]  # S3 through the role
    assert any("pip install" in c and "s2s" in c for c in config["setup_commands"])


def test_runtime_env_excludes_what_must_not_be_uploaded():
    (env,) = documents(CLUSTER / "runtime_env.yaml")
    assert {".venv/", ".git/"} <= set(env["excludes"])
    assert "working_dir" not in env  # given on the command line: --working-dir .
