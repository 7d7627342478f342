"""cluster/: every manifest parses and agrees with jobs/ (entrypoints exist and accept their flags
and settings), with KubeRay's CRD schemas (strict: unknown fields fail), with the images the
documented build commands make, with one Ray version, and with the instance types it is sized for;
the nightly job exits with the job's own status and never resubmits a busy run; no credentials."""

import copy
import functools
import gzip
import importlib.util
import io
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

from s2s import cli, exitcodes
from s2s.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"  # provenance: its README.md
MANIFESTS = sorted(CLUSTER.rglob("*.yaml"))
IMAGE_ROOT = "/home/ray/s2s"  # where cluster/Dockerfile puts the repository
# Access keys, secret keys and tokens written out; references (secretKeyRef, roles) are fine.
SECRETS = re.compile(
    r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S|"
    r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}|password\s*:",
    re.IGNORECASE,
)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML

# The instance types cluster/ names: (vCPU, GiB of memory, GPUs), from AWS's instance pages.
INSTANCE_TYPES = {
    "m6i.2xlarge": (8, 32, 0),
    "g5.2xlarge": (8, 32, 1),  # 1 A10G (24 GB)
}
INSTANCE_TYPE = re.compile(
    r"\b[a-z][a-z0-9-]*\d[a-z0-9-]*\.(?:\d*x?large|medium|small|micro|metal)\b"
)
INSTANCE_ANNOTATION = "s2s/instance-type"  # on each Ray group's pod template
# KubeRay's autoscaler sidecar in the head pod, unless autoscalerOptions.resources says otherwise.
AUTOSCALER_DEFAULT = {"cpu": "500m", "memory": "512Mi"}
GiB = 2**30


def allocatable(instance_type: str) -> tuple[float, float, int]:
    """What one pod can get of a node: kubelet and system reservations and the DaemonSets (CNI,
    kube-proxy, device plugin, log agent) take a share of every node. Rule of thumb, documented in
    cluster/README.md: vCPU - 0.5, memory x 0.9 - 1 GiB; every GPU."""
    vcpu, gib, gpus = INSTANCE_TYPES[instance_type]
    return vcpu - 0.5, (gib * 0.9 - 1) * GiB, gpus


QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
SUFFIX |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    """A Kubernetes resource quantity: 7, "7", "200m", "26Gi"."""
    match = QUANTITY.fullmatch(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match[1]) * SUFFIX[match[2]]


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kuberay_documents() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in documents(p)]


def of_kind(kind: str) -> list[dict]:
    return [d for _, d in kuberay_documents() if d["kind"] == kind]


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_job(name: str):
    return load_module(name, REPO / "jobs" / f"{name}.py")


submit = load_module("cluster_submit", CLUSTER / "submit.py")  # no ray import until main()


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
        cfg.validate()  # the model settings too
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


def values_of(node, wanted: str) -> list:
    """Every value under the key ``wanted``, anywhere in a document."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == wanted] + [
            x for v in node.values() for x in values_of(v, wanted)
        ]
    if isinstance(node, list):
        return [x for v in node for x in values_of(v, wanted)]
    return []


# --- the schemas the API server checks with ---------------------------------------------------

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
OBJECT_META = {  # the server checks metadata itself, not through the CRD: the fields manifests use
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": STRING,
        "generateName": STRING,
        "namespace": STRING,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": {"type": "array", "items": STRING},
    },
}


def strict(schema: dict) -> dict:
    """A CRD's structural schema as strict field validation applies it: an object's fields are the
    ones it names (unless x-kubernetes-preserve-unknown-fields), int-or-string is integer or
    string, an embedded resource may carry apiVersion, kind and metadata."""
    s = dict(schema)
    if s.get("x-kubernetes-embedded-resource"):
        s["properties"] = {
            "apiVersion": STRING,
            "kind": STRING,
            "metadata": OBJECT_META,
            **s.get("properties", {}),
        }
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s["anyOf"] = [INTEGER, STRING]
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = strict(s[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [strict(v) for v in s[key]]
    if (
        s.get("type") == "object"
        and "additionalProperties" not in s
        and not s.get("x-kubernetes-preserve-unknown-fields")
    ):
        s["additionalProperties"] = False
    if s.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    return s


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict:
    """The openAPIV3Schema of the vendored CRD for ``kind`` at the version ``api_version`` names."""
    group, version = api_version.split("/")
    for path in sorted(CRDS.glob("*.yaml.gz")):
        if not path.name.startswith(f"{group}_{kind.lower()}s."):  # KubeRay's file names
            continue
        with gzip.open(path) as f:
            crd = yaml.load(f, Loader=LOADER)
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            assert served["served"], f"{api_version} {kind} is not served"
            schema = strict(served["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted({"apiVersion", "kind", *schema.get("required", [])})
            return schema
    raise LookupError(f"no vendored CRD for {api_version} {kind} in {CRDS}")


def obj(properties: dict, *required: str) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {**schema, "required": list(required)} if required else schema


JOB_INTEGERS = ("activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex", "completions",
                "maxFailedIndexes", "parallelism", "ttlSecondsAfterFinished")  # fmt: skip


def cronjob_schema() -> dict:
    """batch/v1 CronJob, by hand: the fields of CronJobSpec, JobSpec and PodFailurePolicy (k8s
    1.31); the pod template is core/v1's, taken from the RayCluster CRD's head template."""
    pod_template = crd_schema("ray.io/v1", "RayCluster")["properties"]["spec"]["properties"][
        "headGroupSpec"
    ]["properties"]["template"]
    exit_codes = obj(
        {
            "containerName": STRING,
            "operator": {"enum": ["In", "NotIn"]},
            "values": {"type": "array", "items": INTEGER, "minItems": 1, "maxItems": 255},
        },
        "operator",
        "values",
    )
    rule = obj(
        {
            "action": {"enum": ["FailJob", "FailIndex", "Ignore", "Count"]},
            "onExitCodes": exit_codes,
            "onPodConditions": {
                "type": "array",
                "items": obj({"type": STRING, "status": STRING}, "type"),
            },
        },
        "action",
    )
    job_spec = obj(
        {
            **dict.fromkeys(JOB_INTEGERS, INTEGER),
            "suspend": {"type": "boolean"},
            "completionMode": {"enum": ["NonIndexed", "Indexed"]},
            "podReplacementPolicy": {"enum": ["TerminatingOrFailed", "Failed"]},
            "podFailurePolicy": obj({"rules": {"type": "array", "items": rule}}, "rules"),
            "template": pod_template,
        },
        "template",
    )
    spec = obj(
        {
            "schedule": STRING,
            "timeZone": STRING,
            "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
            "startingDeadlineSeconds": INTEGER,
            "successfulJobsHistoryLimit": INTEGER,
            "failedJobsHistoryLimit": INTEGER,
            "suspend": {"type": "boolean"},
            "jobTemplate": obj({"metadata": OBJECT_META, "spec": job_spec}, "spec"),
        },
        "schedule",
        "jobTemplate",
    )
    return obj(
        {
            "apiVersion": {"enum": ["batch/v1"]},
            "kind": {"enum": ["CronJob"]},
            "metadata": OBJECT_META,
            "spec": spec,
        },
        "apiVersion",
        "kind",
        "metadata",
        "spec",
    )


SERVICE_ACCOUNT = obj(
    {
        "apiVersion": {"enum": ["v1"]},
        "kind": {"enum": ["ServiceAccount"]},
        "metadata": OBJECT_META,
        "automountServiceAccountToken": {"type": "boolean"},
        "imagePullSecrets": {"type": "array", "items": obj({"name": STRING})},
    },
    "apiVersion",
    "kind",
    "metadata",
)


def schema_for(doc: dict) -> dict:
    if doc["apiVersion"].startswith("ray.io/"):
        return crd_schema(doc["apiVersion"], doc["kind"])
    schemas = {
        ("batch/v1", "CronJob"): cronjob_schema,
        ("v1", "ServiceAccount"): lambda: SERVICE_ACCOUNT,
    }
    assert (doc["apiVersion"], doc["kind"]) in schemas, f"no schema for {doc['kind']}: add one"
    return schemas[doc["apiVersion"], doc["kind"]]()


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft4Validator(schema_for(doc))
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    )


# --- images, the documented build commands, versions ---------------------------------------------


def build_commands(text: str) -> list[list[str]]:
    """Every `docker build` command in a file's text (comment marks and line continuations gone)."""
    text = re.sub(r"\\\n[#\s]*", " ", text)
    commands = []
    for line in text.splitlines():
        if "docker build" in line:
            line = re.split(r"&&|;|\|", line[line.index("docker build") :])[0]
            commands.append(shlex.split(line))
    return commands


PIP_DEFAULT_INDEX = "https://pypi.org/simple"


def dockerfile() -> tuple[dict[str, str], str]:
    """cluster/Dockerfile's ARGs with their defaults, and its FROM image (maybe with ${ARG}s)."""
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)(?:=(\S+))?", text, re.M))
    (image,) = re.findall(r"^FROM\s+(\S+)", text, re.M)
    return args, image


def build_of(args: dict[str, str]) -> dict[str, str]:
    """What an image is built from: its base image and where its torch comes from."""
    _, image = dockerfile()
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], image)
    return {"base": base, "torch_index": args.get("TORCH_INDEX") or PIP_DEFAULT_INDEX}


def built_images(command: list[str]) -> dict[str, dict[str, str]]:
    """tag -> build_of(the Dockerfile's defaults, then --build-arg) for one `docker build`."""
    assert command[:2] == ["docker", "build"], command
    declared, _ = dockerfile()
    args, tags, words = dict(declared), [], iter(command[2:])
    for word in words:
        if word in ("-t", "--tag"):
            tags.append(next(words))
        elif word == "--build-arg":
            name, value = next(words).split("=", 1)
            assert name in declared, f"--build-arg {name}: no ARG {name} in cluster/Dockerfile"
            args[name] = value
        elif word in ("-f", "--file"):
            assert next(words) == "cluster/Dockerfile", command
    assert command[-1] == ".", f"builds from the repository root: {shlex.join(command)}"
    return {tag: build_of(args) for tag in tags}


def documented_images() -> dict[str, dict[str, str]]:
    """Every image tag the build commands in cluster/Dockerfile and cluster/README.md make."""
    from_dockerfile = build_commands((CLUSTER / "Dockerfile").read_text())
    from_readme = build_commands((CLUSTER / "README.md").read_text())
    assert from_dockerfile and from_readme
    images = {tag: b for command in from_dockerfile for tag, b in built_images(command).items()}
    assert images == {
        tag: b for command in from_readme for tag, b in built_images(command).items()
    }, "cluster/README.md and the Dockerfile's comment document different builds"
    return images


def is_gpu_build(build: dict[str, str]) -> bool:
    return bool(re.search(r"-(gpu|cu\d+)\b", build["base"]))


def ray_version_of(image: str) -> str:
    match = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)(?:-\S+)?", image)
    assert match, f"not a rayproject/ray base image with a version: {image}"
    return match[1]


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_manifest_parses_and_holds_no_credentials(path):
    assert documents(path)
    assert not SECRETS.search(path.read_text()), f"{path} seems to hold a credential"


def test_kuberay_manifests_run_real_jobs_with_images_and_resources():
    kinds = {}
    for path, doc in kuberay_documents():
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


def test_paths_in_the_image_exist_in_the_repository():
    """Manifests run scripts at /home/ray/s2s/...: the Dockerfile copies the repository there."""
    copy_repo = (
        rf"^COPY\b.*\s\.\s+{IMAGE_ROOT}/?$|^WORKDIR\s+{IMAGE_ROOT}/?\n(.*\n)*COPY\b.*\s\.\s+\.$"
    )
    assert re.search(copy_repo, (CLUSTER / "Dockerfile").read_text(), re.M)
    paths = re.findall(
        rf"{IMAGE_ROOT}/(\S+\.py)", "".join(p.read_text() for p in KUBERAY.glob("*"))
    )
    assert paths
    for path in paths:
        assert (REPO / path).is_file(), f"{IMAGE_ROOT}/{path} is not in the repository"


@pytest.mark.parametrize(
    ("path", "doc"),
    kuberay_documents(),
    ids=[f"{p.name}:{d['kind']}" for p, d in kuberay_documents()],
)
def test_kuberay_manifests_match_their_schemas(path, doc):
    """RayCluster/RayJob against KubeRay's CRD (unknown fields rejected, as the API server's strict
    field validation does); the CronJob against the batch/v1 fields it uses."""
    assert schema_errors(doc) == []


def _set(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with the value at a dotted path replaced (or its key renamed)."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(value, tuple) and value[0] == "rename":  # ("rename", new key)
        node[value[1]] = node.pop(last)
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("kind", "path", "value", "error"),
    [
        ("RayCluster", "spec.headGroupSpec.rayStartParams", ("rename", "rayStartParam"),
         "'rayStartParam' was unexpected"),
        ("RayCluster", "spec.workerGroupSpecs.1.replicas", "one", "is not of type 'integer'"),
        ("RayCluster", "spec.workerGroupSpecs.1.template.spec.containers.0.resources.limits.memory",
         "26 GB", "does not match"),
        ("RayCluster", "spec.headGroupSpec.template.spec.containers.0.imag", "x",
         "'imag' was unexpected"),
        ("RayCluster", "spec.headGroupSpec.rayStartParams.num-cpus", 4, "is not of type 'string'"),
        ("RayJob", "spec.entrypointNumCPUs", 1, "'entrypointNumCPUs' was unexpected"),
        ("CronJob", "spec.jobTemplate.spec.backoffLimit", ("rename", "backofLimit"),
         "'backofLimit' was unexpected"),
        ("CronJob", "spec.jobTemplate.spec.podFailurePolicy.rules.0.action", "Fail",
         "is not one of"),
        ("CronJob", "spec.jobTemplate.spec.template.spec.restartPolicy", ["Never"],
         "is not of type 'string'"),
    ],
)  # fmt: skip
def test_schema_check_rejects_misspelled_fields_and_wrong_types(kind, path, value, error):
    doc = _set(of_kind(kind)[0], path, value)
    errors = schema_errors(doc)
    assert any(error in e for e in errors), errors


def test_schema_check_takes_quantities_as_int_or_string():
    (cluster,) = of_kind("RayCluster")
    for cpu, memory in [(8, "16Gi"), ("8", 17179869184), ("200m", "512Mi")]:
        doc = _set(
            cluster,
            "spec.headGroupSpec.template.spec.containers.0.resources.limits",
            {"cpu": cpu, "memory": memory},
        )
        assert schema_errors(doc) == []


def test_every_image_is_built_by_a_documented_command():
    """Every image a manifest names is a tag the build commands in cluster/Dockerfile and
    cluster/README.md produce; GPU pods run the image built on Ray's CUDA base with a CUDA torch."""
    images = documented_images()
    named = set()
    for path, doc in kuberay_documents():
        for container in containers(doc):
            named.add(container["image"])
            assert container["image"] in images, f"{path}: {container['image']} is never built"
            if "nvidia.com/gpu" in container["resources"].get("limits", {}):
                assert is_gpu_build(images[container["image"]]), f"{path}: GPU pod, CPU image"
    gpu_images = {i for i in named if is_gpu_build(images[i])}
    assert gpu_images and gpu_images != named  # the rest run the smaller CPU image
    for tag, build in images.items():  # -gpu: CUDA base, CUDA torch; else neither
        gpu = is_gpu_build(build)
        assert gpu == tag.endswith("-gpu"), f"{tag} is built from {build['base']}"
        assert gpu != build["torch_index"].rstrip("/").endswith("/cpu"), f"{tag}: {build}"


def test_one_ray_and_one_torch_version_everywhere():
    """The image's Ray (Dockerfile BASE, each documented build) = aws.yaml's pin = KubeRay's
    rayVersion: a node on another Ray cannot join. torch: the same pin in the image and aws.yaml."""
    versions = {f"build {tag}": ray_version_of(b["base"]) for tag, b in documented_images().items()}
    versions["Dockerfile's default base"] = ray_version_of(build_of(dockerfile()[0])["base"])
    (aws,) = documents(CLUSTER / "aws.yaml")
    pip_words = [
        w.strip("'\"") for c in aws["setup_commands"] if "pip install" in c for w in shlex.split(c)
    ]
    rays = [w for w in pip_words if re.match(r"ray\b", w)]
    assert rays, "aws.yaml installs Ray only through s2s's range: pin it"
    for word in rays:
        assert re.fullmatch(r"ray(\[[\w,]+\])?==\d+\.\d+\.\d+", word), f"aws.yaml: unpinned {word}"
        versions[f"aws.yaml {word}"] = word.split("==")[1]
    for path, doc in kuberay_documents():
        for version in values_of(doc, "rayVersion"):
            versions[f"{path.name} rayVersion"] = version
    assert any("rayVersion" in k for k in versions)
    assert len(set(versions.values())) == 1, versions
    torch = set(re.findall(r"torch==([\w.+]+)", (CLUSTER / "Dockerfile").read_text()))
    torch |= set(re.findall(r"torch==([\w.+]+)", " ".join(aws["setup_commands"])))
    assert len(torch) == 1, torch


def test_instance_types_named_are_known():
    """Every instance type cluster/ names has its size in INSTANCE_TYPES (the sizing checks')."""
    named = set()
    for path in [*MANIFESTS, CLUSTER / "README.md"]:
        named |= set(INSTANCE_TYPE.findall(path.read_text()))
    assert named and named <= set(INSTANCE_TYPES), named - set(INSTANCE_TYPES)
    (aws,) = documents(CLUSTER / "aws.yaml")
    for node in aws["available_node_types"].values():
        vcpu, _, gpus = INSTANCE_TYPES[node["node_config"]["InstanceType"]]
        assert node["resources"].get("CPU", 0) <= vcpu and node["resources"].get("GPU", 0) <= gpus


def ray_groups(cluster: dict):
    spec = cluster["spec"]
    yield "head", spec["headGroupSpec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group


def sizing_problems(cluster: dict) -> list[str]:
    """Each Ray group's pod (all its containers, and the autoscaler sidecar in the head) asks for no
    more than the allocatable estimate of the instance type it names, and rayStartParams tells Ray
    no more CPUs and exactly the GPUs the Ray container holds."""
    problems = []
    for name, group in ray_groups(cluster):
        template = group["template"]
        instance = template.get("metadata", {}).get("annotations", {}).get(INSTANCE_ANNOTATION)
        if instance not in INSTANCE_TYPES:
            problems.append(
                f"{name}: sized for no known instance type ({INSTANCE_ANNOTATION}: {instance!r})"
            )
            continue
        cpus, memory, gpus = allocatable(instance)
        pod = [c.get("resources", {}) for c in template["spec"]["containers"]]
        if name == "head" and cluster["spec"].get("enableInTreeAutoscaling"):
            sidecar = cluster["spec"].get("autoscalerOptions", {}).get("resources")
            pod.append(sidecar or {"requests": AUTOSCALER_DEFAULT, "limits": AUTOSCALER_DEFAULT})
        for kind in ("requests", "limits"):
            used = {
                r: sum(quantity(x.get(kind, {}).get(r, 0)) for x in pod)
                for r in ("cpu", "memory", "nvidia.com/gpu")
            }
            if used["cpu"] > cpus:
                problems.append(f"{name}: {kind} {used['cpu']:g} CPUs > {cpus:g} on {instance}")
            if used["memory"] > memory:
                problems.append(
                    f"{name}: {kind} {used['memory'] / GiB:.1f} GiB > "
                    f"{memory / GiB:.1f} GiB on {instance}"
                )
            if used["nvidia.com/gpu"] > gpus:
                problems.append(
                    f"{name}: {kind} {used['nvidia.com/gpu']:g} GPUs > {gpus} on {instance}"
                )
        ray = template["spec"]["containers"][0].get("resources", {})  # KubeRay: the first container
        if ray.get("requests") != ray.get("limits"):
            problems.append(f"{name}: the Ray container's requests != limits")
        limits = ray.get("limits", {})
        cpu, gpu = quantity(limits.get("cpu", 0)), quantity(limits.get("nvidia.com/gpu", 0))
        params = group.get("rayStartParams", {})
        num_cpus = params.get("num-cpus", "")
        if not num_cpus.isdigit():  # else KubeRay rounds the container's CPUs up for Ray
            problems.append(f"{name}: num-cpus {num_cpus!r} is not a whole number")
        elif name == "head" and not 0 < int(num_cpus) <= cpu:  # the rest: drivers, dashboard, GCS
            problems.append(f"{name}: num-cpus {num_cpus} > the container's {cpu:g} CPUs")
        elif name != "head" and int(num_cpus) != cpu:
            problems.append(f"{name}: num-cpus {num_cpus} != the container's {cpu:g} CPUs")
        if quantity(params.get("num-gpus", 0)) != gpu:
            problems.append(f"{name}: num-gpus {params.get('num-gpus')} != the container's {gpu:g}")
        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        if gpu and toleration not in template["spec"].get("tolerations", []):
            problems.append(f"{name}: GPU pods without the nvidia.com/gpu toleration")
    return problems


def test_ray_groups_fit_their_instance_types():
    (cluster,) = of_kind("RayCluster")
    assert sizing_problems(cluster) == []


GPU = "spec.workerGroupSpecs.1"
HEAD = "spec.headGroupSpec.template.spec.containers.0.resources"
OLD_GPU = {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"}  # the GPU group as it was


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({f"{GPU}.template.spec.containers.0.resources": {"requests": OLD_GPU, "limits": OLD_GPU}},
         "gpu: requests 8 CPUs > 7.5 on g5.2xlarge"),
        ({f"{GPU}.template.spec.containers.0.resources.limits.memory": "30Gi"},
         "gpu: limits 30.0 GiB > 27.8 GiB"),
        ({f"{GPU}.rayStartParams": {"num-cpus": "7"}}, "gpu: num-gpus None != the container's 1"),
        ({"spec.workerGroupSpecs.0.rayStartParams.num-cpus": "8"}, "cpu: num-cpus 8 != the"),
        ({"spec.headGroupSpec.rayStartParams.num-cpus": "3.5"}, "not a whole number"),
        ({f"{GPU}.template.metadata": {}}, "gpu: sized for no known instance type"),
        ({f"{GPU}.template.spec.tolerations": []}, "without the nvidia.com/gpu toleration"),
        # 27.5Gi fits alone; KubeRay's default autoscaler sidecar (512Mi) tips the head pod over
        ({"spec.autoscalerOptions": {}, f"{HEAD}.requests.memory": "27.5Gi",
          f"{HEAD}.limits.memory": "27.5Gi"}, "head: requests 28.0 GiB > 27.8 GiB"),
    ],
)  # fmt: skip
def test_sizing_check_catches_pods_larger_than_their_nodes(changes, problem):
    (cluster,) = of_kind("RayCluster")
    for path, value in changes.items():
        cluster = _set(cluster, path, value)
    problems = sizing_problems(cluster)
    assert any(problem in p for p in problems), problems


def pod_failure_action(policy: dict, container: str, code: int) -> str:
    """What a batch/v1 Job does when ``container`` exits with ``code``: the first matching rule's
    action, else Count (the failure counts against backoffLimit and the pod is retried)."""
    for rule in policy.get("rules", []):
        on = rule.get("onExitCodes")
        if (
            on
            and on.get("containerName", container) == container
            and (code in on["values"]) == (on["operator"] == "In")
        ):
            return rule["action"]
    return "Count"


def nightly_problems(cron: dict) -> list[str]:
    """The nightly CronJob: no overlapping nights; the pod exits with the Ray job's own status
    (cluster/submit.py); what a retry cannot change (1, 2, 3 busy) fails the Job without a retry;
    an internal error (70) is retried; an evicted pod is replaced and follows the same run."""
    problems = []
    if cron["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append("nights can overlap: concurrencyPolicy is not Forbid")
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    command = container.get("command", [])
    if command[:2] != ["python", f"{IMAGE_ROOT}/cluster/submit.py"]:
        problems.append(
            f"the pod runs {shlex.join(command[:3])}, not cluster/submit.py: its exit "
            "status is not the job's"
        )
    else:
        args = submit.build_parser().parse_args(command[2:])
        check_entrypoint(args.entrypoint)
        if not args.group:
            problems.append("no --group: a replacement pod would submit a second run")
        env = {e["name"] for e in container.get("env", [])}
        if missing := set(re.findall(r"\$\((\w+)\)", " ".join(command))) - env:
            problems.append(f"$(...) names no env var of the container: {sorted(missing)}")
    policy = job.get("podFailurePolicy", {})
    if policy and pod.get("restartPolicy") != "Never":
        problems.append("podFailurePolicy needs restartPolicy: Never")
    retries = job.get("backoffLimit", 6)  # Kubernetes' default: 6
    for code in (exitcodes.INPUTS_FAILED, exitcodes.REFUSED, exitcodes.BUSY):
        if retries and pod_failure_action(policy, container["name"], code) != "FailJob":
            problems.append(
                f"exit {code} is retried (backoffLimit {retries}); only FailJob stops it"
            )
    if pod_failure_action(policy, container["name"], exitcodes.INTERNAL) != "Count" or not (
        1 <= retries <= 2
    ):
        problems.append(f"exit {exitcodes.INTERNAL} should be retried once or twice")
    for rule in policy.get("rules", []):
        if exitcodes.OK in rule.get("onExitCodes", {}).get("values", []):
            problems.append("exit code 0 in onExitCodes (the API server rejects it)")
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            problems.append(f"a rule needs one of onExitCodes, onPodConditions: {rule}")
    evicted = [
        r["action"]
        for r in policy.get("rules", [])
        if {"type": "DisruptionTarget"} in r.get("onPodConditions", [])
    ]
    if evicted[:1] != ["Ignore"]:
        problems.append("an evicted pod counts as a failure: no DisruptionTarget -> Ignore rule")
    return problems


def test_nightly_job_exits_with_the_jobs_status_and_never_resubmits_a_refused_run():
    (cron,) = of_kind("CronJob")
    assert nightly_problems(cron) == []


def test_nightly_check_catches_ray_job_submit_and_retried_refusals():
    (cron,) = of_kind("CronJob")
    job = "spec.jobTemplate.spec"
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    ray_job_submit = ["ray", "job", "submit", "--address", "http://s2s-head-svc:8265"]
    old = _set(cron, f"{job}.template.spec.containers.0.command",
               ray_job_submit + command[command.index("--") :])  # fmt: skip
    old["spec"]["jobTemplate"]["spec"].pop("podFailurePolicy")  # the CronJob as it was
    problems = nightly_problems(old)
    assert any("not cluster/submit.py" in p for p in problems), problems
    assert any(f"exit {exitcodes.BUSY} is retried" in p for p in problems), problems
    problems = nightly_problems(_set(cron, f"{job}.template.spec.restartPolicy", "OnFailure"))
    assert problems == ["podFailurePolicy needs restartPolicy: Never"]
    problems = nightly_problems(_set(cron, "spec.concurrencyPolicy", "Allow"))
    assert problems == ["nights can overlap: concurrencyPolicy is not Forbid"]


# --- cluster/submit.py, with a stand-in for Ray's JobSubmissionClient ---------------------------


class FakeJobs:
    """Ray's JobSubmissionClient, as far as cluster/submit.py uses it: get_job_info answers
    ``infos`` in turn (the last one repeats); submit_job raises ``refusals`` first."""

    def __init__(self, *infos, jobs=(), logs=("translate: 3 documents\n",), refusals=()):
        self.infos, self.jobs, self.logs = list(infos), list(jobs), logs
        self.refusals, self.submitted, self.asked = list(refusals), [], []

    def list_jobs(self):
        return self.jobs

    def submit_job(self, entrypoint, submission_id, metadata=None):
        if self.refusals:
            raise self.refusals.pop(0)
        self.submitted.append(SimpleNamespace(entrypoint=entrypoint, metadata=metadata))
        return submission_id

    async def tail_job_logs(self, job_id):
        for line in self.logs:
            if isinstance(line, Exception):
                raise line
            yield line

    def get_job_info(self, job_id):
        self.asked.append(job_id)
        info = self.infos.pop(0) if len(self.infos) > 1 else self.infos[0]
        if isinstance(info, Exception):
            raise info
        return info


def info(status, code=None, **kw):
    return SimpleNamespace(status=status, driver_exit_code=code, **kw)


def run(client, group="s2s-nightly-translate-1", **kw):
    out = io.StringIO()
    code = submit.run(
        client,
        ["python", "jobs/translate.py", "--beam", "4"],
        group,
        out=out,
        sleep=lambda s: None,
        **kw,
    )
    return code, out.getvalue()


@pytest.mark.parametrize(
    ("status", "driver", "expected"),
    [
        ("SUCCEEDED", 0, exitcodes.OK),
        ("FAILED", exitcodes.INPUTS_FAILED, exitcodes.INPUTS_FAILED),
        ("FAILED", exitcodes.REFUSED, exitcodes.REFUSED),
        ("FAILED", exitcodes.BUSY, exitcodes.BUSY),
        ("FAILED", exitcodes.INTERNAL, exitcodes.INTERNAL),
        ("FAILED", None, exitcodes.INTERNAL),  # never started: runtime env, entrypoint
        ("FAILED", -9, exitcodes.INTERNAL),  # killed by a signal (OOM)
        ("STOPPED", None, exitcodes.INTERNAL),
    ],
)
def test_submit_exits_with_the_jobs_own_status(status, driver, expected):
    client = FakeJobs(info("PENDING"), info("RUNNING"), info(status, driver))
    code, logs = run(client)
    assert code == expected
    assert logs == "translate: 3 documents\n"  # the job's log reaches the pod's
    (submitted,) = client.submitted
    assert submitted.entrypoint == "python jobs/translate.py --beam 4"
    assert submitted.metadata == {submit.GROUP_KEY: "s2s-nightly-translate-1"}
    assert (submit.OK, submit.INTERNAL) == (exitcodes.OK, exitcodes.INTERNAL)


def test_submit_follows_its_groups_running_job_instead_of_submitting_a_second():
    mine = info("RUNNING", submission_id="mine", metadata={submit.GROUP_KEY: "night-2"})
    ended = info("FAILED", 70, submission_id="before", metadata={submit.GROUP_KEY: "night-2"})
    other = info("RUNNING", submission_id="other", metadata={submit.GROUP_KEY: "night-1"})
    client = FakeJobs(info("SUCCEEDED", 0), jobs=[ended, other, mine])
    assert run(client, group="night-2")[0] == exitcodes.OK
    assert client.submitted == [] and set(client.asked) == {"mine"}
    client = FakeJobs(info("FAILED", 3), jobs=[ended, other])  # nothing of night-2 running
    assert run(client, group="night-2")[0] == exitcodes.BUSY
    assert len(client.submitted) == 1


def test_submit_outlives_a_lost_log_stream_and_a_restarting_head():
    client = FakeJobs(
        info("RUNNING"), ConnectionError("head restarting"), info("FAILED", 1),
        logs=["first line\n", RuntimeError("WebSocket connection closed")],
    )  # fmt: skip
    assert run(client) == (exitcodes.INPUTS_FAILED, "first line\n")
    starting = RuntimeError("No available agent to submit job, please try again later.")
    client = FakeJobs(ConnectionError("not yet"), info("SUCCEEDED", 0), refusals=[starting])
    assert run(client)[0] == exitcodes.OK and len(client.submitted) == 1  # submitted, once
    answer_lost = FakeJobs(info("SUCCEEDED", 0), refusals=[TimeoutError("no answer")])
    assert run(answer_lost)[0] == exitcodes.OK and answer_lost.submitted == []  # it went through
    args = ["--address", "http://head:8265", "--poll", "0", "--patience", "3", "--", "python", "-V"]
    gone = FakeJobs(info("RUNNING"), ConnectionError("gone"))
    assert submit.main(args, connect=lambda address: gone) == exitcodes.INTERNAL  # status lost
    assert submit.main(args, connect=lambda address: 1 / 0) == exitcodes.INTERNAL  # no head


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
