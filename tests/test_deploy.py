"""deploy/: the container image and the Kubernetes manifests of deepseek-serve, checked offline (issue 21).

- Every manifest of deploy/k8s/ (what ``kubectl apply -k deploy/k8s`` sends: the kustomization's resources with
  its image name applied) and prometheus-adapter's rules ConfigMap against the Kubernetes schemas that
  ``kubernetes-validate`` ships, strict, for ``K8S_VERSION`` (tests/test_k8s_manifests.py's helpers).
- prometheus-adapter's config (the ConfigMap's ``config.yaml``) against a strict schema transcribed from the
  adapter's config types (``ADAPTER_SCHEMA``), and the Helm values that mount it.
- Cross-checks against the code: the container's arguments through deepseek-serve's own parser, probe paths
  among the app's routes and the paths that need no API key, the HPA's metric among the ones the server
  exports (a gauge), the adapter rule's series, the Service's ports, selectors, Secret keys and volumes.
- deploy/Dockerfile is parsed, not built (no image registry is reachable here): a numeric non-root USER, the
  EXPOSEd ports, ENTRYPOINT + CMD through the same parser, the job store outside the read-only model directory.
Each check is shown to fail on a planted mistake.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.test_k8s_manifests import K8S_VERSION, builtin_errors, strict

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
ADAPTER = DEPLOY / "prometheus-adapter"
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "images"}  # no transformers: files are sent as written
ENV_REF = re.compile(r"\$\((\w+)\)")  # Kubernetes' $(VAR) expansion in a container's args

# prometheus-adapter's MetricsDiscoveryConfig (kubernetes-sigs/prometheus-adapter, pkg/config/config.go at commit
# 0536a5d481daa836d5a97d58a28341471acd2faa), field for field from its yaml tags. The adapter reads its config with
# yaml.UnmarshalStrict (pkg/config/loader.go), so an unknown field or a wrong type is an error there too; the
# `required` entries are this test's: the parser would accept a rule without a query or an override without a
# resource, which then maps nothing.
_RESOURCES = {"type": "object", "properties": {
    "template": {"type": "string"},
    "overrides": {"type": "object", "additionalProperties": {
        "type": "object", "properties": {"group": {"type": "string"}, "resource": {"type": "string"}},
        "required": ["resource"]}}}}  # fmt: skip
_RULE = {"type": "object", "required": ["seriesQuery"], "properties": {
    "seriesQuery": {"type": "string"},
    "seriesFilters": {"type": "array", "items": {"type": "object", "maxProperties": 1,
                                                 "properties": {"is": {"type": "string"}, "isNot": {"type": "string"}}}},
    "resources": _RESOURCES,
    "name": {"type": "object", "properties": {"matches": {"type": "string"}, "as": {"type": "string"}}},
    "metricsQuery": {"type": "string"},
    "labelValueReplacements": {"type": "array", "items": {
        "type": "object", "properties": {"find": {"type": "string"}, "replace": {"type": "string"}}}}}}  # fmt: skip
ADAPTER_SCHEMA = strict({"type": "object", "properties": {
    "rules": {"type": "array", "items": _RULE},
    "externalRules": {"type": "array", "items": _RULE},
    "resourceRules": {"type": "object"}}})  # fmt: skip


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def rendered() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/k8s`` sends: every listed resource, with the kustomization's images set."""
    return copy.deepcopy(_rendered())


@cache
def _rendered() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i.get('newTag', 'latest')}" for i in kustomization["images"]}
    docs = [d for name in kustomization["resources"] for d in load_yaml(K8S / name)]
    for doc in docs:
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            c["image"] = images.get(c["image"], c["image"])
    return docs


@cache
def _schema_errors(obj_json: str) -> tuple[str, ...]:
    return tuple(builtin_errors(json.loads(obj_json)))


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """``builtin_errors``, once per distinct object (kubernetes-validate reads its schema files on every call)."""
    return list(_schema_errors(json.dumps(obj, sort_keys=True)))


def adapter() -> dict[str, Any]:
    """prometheus-adapter's rules ConfigMap."""
    (config_map,) = load_yaml(ADAPTER / "rules.yaml")
    return config_map


def the(kind: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return the("Deployment", docs)["spec"]["template"]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _pod(docs)["spec"]["containers"][0]


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Refused(message)  # argparse would print it and exit: we want the words


def serve_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by deepseek-serve's own parser (raises _Refused with argparse's message)."""
    from deepseek.cli.serve_cmd import add_arguments

    parser = _Parser(prog="deepseek-serve")
    add_arguments(parser)
    return parser.parse_args(argv)


@cache  # one app for the module: the checks only read its route table
def app_paths() -> tuple[frozenset[str], frozenset[str]]:
    """The app's routes, and the paths it answers without an API key (probes send none)."""
    from deepseek.serve import ServeSettings, create_app
    from deepseek.serve.guard import OPEN_PATHS

    app = create_app([], ServeSettings())
    return frozenset(r.path for r in app.app.routes), frozenset(OPEN_PATHS)


@cache
def exported_metrics() -> dict[str, str]:
    """Name -> type of every metric family the server's /metrics renders."""
    from prometheus_client.parser import text_string_to_metric_families

    from deepseek.serve.metrics import ServeMetrics

    return {f.name: f.type for f in text_string_to_metric_families(ServeMetrics().render().decode())}


def _secret_value(docs: list[dict[str, Any]], ref: dict[str, str]) -> str | None:
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
    return secrets[0].get("stringData", {}).get(ref["key"]) if secrets else None


def deployment_errors(docs: list[dict[str, Any]]) -> list[str]:
    """The Deployment against the server it runs and the objects beside it."""
    errors, pod, c = [], _pod(docs)["spec"], _container(docs)
    env = {e["name"]: e for e in c.get("env", [])}
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and _secret_value(docs, ref) is None:
            errors.append(f"env {e['name']}: no key {ref['key']!r} in a shipped Secret {ref['name']!r}")
    if "command" in c:
        errors.append("command: the image's ENTRYPOINT (deepseek-serve) must run; set args only")

    def expand(word: str) -> str:  # what the kubelet does to $(VAR) before starting the container
        def value(m: re.Match) -> str:
            e = env.get(m.group(1))
            if e is None:
                errors.append(f"args: $({m.group(1)}) names no env variable of the container")
                return m.group(0)
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            return (_secret_value(docs, ref) or "") if ref else e.get("value", "")

        return ENV_REF.sub(value, word)

    try:
        args = serve_args([expand(a) for a in c.get("args", [])])
    except _Refused as exc:
        return [*errors, f"args: deepseek-serve refuses them: {exc}"]
    if "DEEPSEEK_SERVE_API_KEY" not in env or args.api_key:
        errors.append("the API key must come from the Secret as DEEPSEEK_SERVE_API_KEY, never from args")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != args.port or ports.get("grpc") != args.grpc_port:
        errors.append(f"ports {ports}: expected http {args.port} and grpc {args.grpc_port} (from args)")
    if args.host != "0.0.0.0":
        errors.append(f"args --host {args.host}: the kubelet and the Service reach the pod on its own IP")
    routes, open_paths = app_paths()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c.get(probe, {}).get("httpGet")
        if get is None:
            errors.append(f"{probe}: missing (or not httpGet)")
        elif get["path"] not in routes or get["path"] not in open_paths or ports.get(get["port"]) != args.port:
            errors.append(f"{probe} {get}: not a route answered without an API key on the http port")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        errors.append("readinessProbe: must be /readyz (503 until the models are warmed up)")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        errors.append("livenessProbe: must be /healthz")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    model = mounts.get(args.model_dir)
    if model is None or not model.get("readOnly"):
        errors.append(f"volumeMounts: --model_dir {args.model_dir} must be mounted readOnly")
    elif volumes[model["name"]].get("persistentVolumeClaim", {}).get("claimName") not in {
        d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"
    }:
        errors.append(f"volume {model['name']}: not the shipped PersistentVolumeClaim")
    jobs_db = str(args.jobs_db)
    if not jobs_db.startswith("postgresql://"):
        errors.append(f"--jobs-db {jobs_db!r}: replicas share jobs only through a postgresql:// URL")
    if (jobs_db + "/").startswith(args.model_dir.rstrip("/") + "/"):
        errors.append(f"--jobs-db {jobs_db!r}: inside the read-only model directory")
    security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    if not security.get("runAsNonRoot") or not security.get("readOnlyRootFilesystem"):
        errors.append("securityContext: runAsNonRoot and readOnlyRootFilesystem must be true")
    if "/tmp" not in mounts:
        errors.append("volumeMounts: /tmp (HOME) must be writable under a read-only root filesystem")
    if security.get("runAsUser") != dockerfile_user(DOCKERFILE.read_text()):
        errors.append(f"securityContext.runAsUser {security.get('runAsUser')}: not the image's USER")
    return errors


def cluster_errors(docs: list[dict[str, Any]]) -> list[str]:
    """The Service, HPA and PDB against the Deployment, the server's metrics and the adapter's rule."""
    errors, deployment, c = [], the("Deployment", docs), _container(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if deployment["spec"]["selector"]["matchLabels"].items() - labels.items():
        errors.append("Deployment selector: does not match its own pod labels")
    service, pdb, hpa = the("Service", docs), the("PodDisruptionBudget", docs), the("HorizontalPodAutoscaler", docs)
    for name, selector in (
        ("Service", service["spec"]["selector"]),
        ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"]),
    ):
        if not selector or selector.items() - labels.items():
            errors.append(f"{name} selector {selector}: does not select the Deployment's pods")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in service["spec"]["ports"]:
        if p["targetPort"] not in ports or p["port"] != ports[p["targetPort"]]:
            errors.append(f"Service port {p}: not one of the container's ports {ports} (same number)")
    if {p["targetPort"] for p in service["spec"]["ports"]} != set(ports):
        errors.append(f"Service ports: must expose each container port {sorted(ports)}")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        errors.append(f"HPA scaleTargetRef {target}: not the Deployment")
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    if kinds.get("Resource", {}).get("resource", {}).get("name") != "cpu" or "cpu" not in c["resources"]["requests"]:
        errors.append("HPA: needs a CPU utilisation metric and the container a CPU request")
    pods = kinds.get("Pods", {}).get("pods", {})
    metric, exported = pods.get("metric", {}).get("name"), exported_metrics()
    if exported.get(metric) != "gauge":
        errors.append(f"HPA pods metric {metric!r}: not a gauge the server exports ({sorted(exported)})")
    rules = yaml.safe_load(adapter()["data"]["config.yaml"])["rules"]
    if metric not in {r["name"]["as"] for r in rules}:
        errors.append(f"HPA pods metric {metric!r}: no prometheus-adapter rule serves it")
    args = c["args"]
    max_queue = int(args[args.index("--max-queue") + 1]) if "--max-queue" in args else 256
    if float(pods.get("target", {}).get("averageValue", 0)) >= max_queue:
        errors.append(f"HPA queue target: must be below --max-queue {max_queue}, where a pod answers 429")
    if hpa["spec"].get("minReplicas", 1) <= pdb["spec"].get("minAvailable", 0):
        errors.append("PodDisruptionBudget minAvailable: must be below the HPA's minReplicas, or no drain proceeds")
    threads = next((e.get("value") for e in c.get("env", []) if e["name"] == "OMP_NUM_THREADS"), None)
    if threads != str(c["resources"]["requests"].get("cpu")):
        errors.append(f"OMP_NUM_THREADS {threads}: must equal the CPU request, or torch starts a thread per node core")
    if "replicas" in deployment["spec"]:
        errors.append("Deployment replicas: the HPA owns the count; re-applying would reset it")
    return errors


def adapter_errors(config_map: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """prometheus-adapter's config (its own format) and the Helm values that mount it."""
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    validator = jsonschema.Draft202012Validator(ADAPTER_SCHEMA)
    errors = [f"config.yaml {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    exported = exported_metrics()
    for rule in config.get("rules", []) if isinstance(config, dict) else []:
        series = re.match(r"\s*([a-zA-Z_:][\w:]*)", rule.get("seriesQuery", ""))
        if series is None or series.group(1) not in exported:
            errors.append(f"seriesQuery {rule.get('seriesQuery')!r}: names no metric the server exports")
        elif not re.fullmatch(rule.get("name", {}).get("matches", ".*"), series.group(1)):
            errors.append(f"name.matches {rule['name']['matches']!r}: does not match {series.group(1)}")
        if {"namespace", "pod"} - set(rule.get("resources", {}).get("overrides", {})):
            errors.append("resources.overrides: a pods metric needs the namespace and pod labels")
    if values.get("rules", {}).get("existing") != config_map["metadata"]["name"]:
        errors.append(f"values.yaml rules.existing: must name the ConfigMap {config_map['metadata']['name']!r}")
    return errors


# --- deploy/Dockerfile -------------------------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "Dockerfile"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction: continuation lines joined, comments dropped, as docker reads them."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # docker drops comment lines, also inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def _final_stage(text: str) -> list[tuple[str, str]]:
    steps = dockerfile_instructions(text)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def dockerfile_user(text: str) -> int | None:
    """The numeric UID the image runs as, or None when it is not a number."""
    users = [rest for word, rest in _final_stage(text) if word == "USER"]
    uid = users[-1].split(":")[0] if users else "0"
    return int(uid) if uid.isdigit() else None


def dockerfile_errors(text: str) -> list[str]:
    errors, final = [], _final_stage(text)
    uid = dockerfile_user(text)
    if not uid:  # None (a name: runAsNonRoot cannot check it) or 0 (root, also when USER is missing)
        errors.append("USER: the final stage must run as a numeric, non-zero UID")
    steps = dict(final)  # the last of each instruction is the one in force
    try:
        entrypoint, cmd = json.loads(steps.get("ENTRYPOINT", "null")), json.loads(steps.get("CMD", "null"))
    except json.JSONDecodeError as exc:
        return [*errors, f"ENTRYPOINT/CMD: must be JSON arrays (exec form: signals reach the server): {exc}"]
    if entrypoint != ["deepseek-serve"] or not isinstance(cmd, list):
        return [*errors, f"ENTRYPOINT {entrypoint}: must be ['deepseek-serve'], with CMD its arguments"]
    try:
        args = serve_args(cmd)
    except _Refused as exc:
        return [*errors, f"CMD: deepseek-serve refuses it: {exc}"]
    exposed = {int(p.split("/")[0]) for p in steps.get("EXPOSE", "").split()}
    if exposed != {args.port, args.grpc_port}:
        errors.append(
            f"EXPOSE {sorted(exposed)}: must be the CMD's --port {args.port} and --grpc-port {args.grpc_port}"
        )
    model_dir = args.model_dir.rstrip("/")
    jobs_db = args.jobs_db or f"{model_dir}/.serve/jobs.sqlite"
    if jobs_db.startswith(model_dir + "/"):
        errors.append(f"--jobs-db {jobs_db}: inside the model directory, which is mounted read-only")
    elif not any(
        word == "RUN" and f"chown {uid}" in rest and str(Path(jobs_db).parent) in rest for word, rest in final
    ):
        errors.append(f"--jobs-db {jobs_db}: its directory must be made and owned by UID {uid} in the image")
    runs = [rest for word, rest in dockerfile_instructions(text) if word == "RUN"]
    installs = [c for r in runs for c in r.split("&&") if "pip install" in c]
    if not any("-c constraints.txt" in r and "${EXTRAS}" in r for r in installs):
        errors.append("RUN pip install: the package with ${EXTRAS}, held to constraints.txt")
    extras = re.search(r"^ARG EXTRAS=(\S+)", text, re.M)
    if extras is None or {"serve", "grpc", "postgres"} - set(extras.group(1).split(",")):
        errors.append("ARG EXTRAS: must include serve, grpc and postgres")
    if not re.search(r"^ARG TORCH_INDEX_URL=\S+", text, re.M) or not any('"${TORCH_INDEX_URL}"' in r for r in installs):
        errors.append("ARG TORCH_INDEX_URL: the CPU/CUDA switch must choose the index torch is installed from")
    return errors


SERVER_SOURCES = [*sorted((REPO / "src" / "deepseek" / "serve").glob("*.py")), REPO / "src/deepseek/cli/serve_cmd.py"]


@cache
def _providers() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _installed_with(extras: tuple[str, ...]) -> set[str]:
    """Every distribution ``pip install ".[extras]"`` brings (pyproject.toml's lists, then the installed packages'
    own requirements, transitively), by canonical name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"].get(e, [])]
    todo, seen = [Requirement(r) for r in wanted], set()
    while todo:
        req = todo.pop()
        if (canonicalize_name(req.name), frozenset(req.extras)) in seen:
            continue
        seen.add((canonicalize_name(req.name), frozenset(req.extras)))
        try:
            needs = [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            continue
        todo += [
            r for r in needs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in req.extras or [""])
        ]
    return {name for name, _ in seen}


def image_missing_modules(extras: list[str]) -> list[str]:
    """Modules the server's code imports (outside ``try: ... except ImportError``) that no distribution of
    ``extras`` provides: the image would fail on them at run time."""
    from packaging.utils import canonicalize_name

    installed, providers, missing = _installed_with(tuple(extras)), _providers(), []
    for source in SERVER_SOURCES:
        tree = ast.parse(source.read_text())
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for h in t.handlers
                    if "ImportError" in ast.dump(h.type or ast.Name("")) for b in t.body for n in ast.walk(b)}  # fmt: skip
        for node in ast.walk(tree):
            if id(node) in optional or not isinstance(node, ast.Import | ast.ImportFrom) or getattr(node, "level", 0):
                continue
            for name in [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "deepseek":
                    continue
                if not {canonicalize_name(d) for d in providers.get(top, [top])} & installed:
                    missing.append(f"{source.name}: {name} ({', '.join(providers.get(top, ['?']))})")
    return missing


# --- the tests ---------------------------------------------------------------------------------------------------


def test_every_manifest_is_valid() -> None:
    docs = rendered()
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                         "Secret", "PersistentVolumeClaim"}  # fmt: skip
    for doc in [*docs, adapter()]:
        where = f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {K8S_VERSION})"
        assert schema_errors(doc) == [], f"{where}: {schema_errors(doc)}"
    assert the("HorizontalPodAutoscaler", docs)["apiVersion"] == "autoscaling/v2"  # v1 knows CPU only


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization) <= KUSTOMIZATION_FIELDS, set(kustomization) - KUSTOMIZATION_FIELDS
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    files = {p.name for p in K8S.iterdir()} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    (image,) = kustomization["images"]
    assert _container(load_yaml(K8S / "deployment.yaml"))["image"] == image["name"]
    assert _container(rendered())["image"] == f"{image['newName']}:{image['newTag']}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (its kustomize renders offline)")
def test_kustomize_renders_what_the_checks_read() -> None:
    """``rendered()`` is what kustomize itself makes of deploy/k8s (kubectl's built-in kustomize, offline)."""
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    built = sorted(yaml.safe_load_all(out.stdout), key=key)
    assert built == sorted(rendered(), key=key)
    as_written = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load_yaml(p)]
    assert built != sorted(as_written, key=key), "the comparison must see the image kustomize sets"


def test_the_manifests_agree_with_the_server_and_each_other() -> None:
    docs = rendered()
    assert deployment_errors(docs) == []
    assert cluster_errors(docs) == []


def test_the_adapter_rule_turns_the_queue_gauge_into_a_pods_metric() -> None:
    values = yaml.safe_load((ADAPTER / "values.yaml").read_text())
    assert adapter_errors(adapter(), values) == []
    (rule,) = yaml.safe_load(adapter()["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith("ds_serve_queue_depth{")


def test_the_dockerfile_runs_deepseek_serve_as_a_user_on_a_read_only_model_dir() -> None:
    text = DOCKERFILE.read_text()
    assert dockerfile_errors(text) == []
    assert dockerfile_user(text) == 10001


def test_the_image_installs_every_package_the_server_imports() -> None:
    extras = re.search(r"^ARG EXTRAS=(\S+)", DOCKERFILE.read_text(), re.M).group(1).split(",")
    missing = image_missing_modules(extras)
    assert missing == [], f"pip install '.[{','.join(extras)}]' lacks what these import; add it to an extra: {missing}"
    without_postgres = image_missing_modules([e for e in extras if e != "postgres"])
    assert "jobs_pg.py: psycopg2 (psycopg2-binary)" in without_postgres, "the check must notice an extra left out"


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return the("Deployment", docs)


def _hpa(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return the("HorizontalPodAutoscaler", docs)


def _args(docs: list[dict[str, Any]]) -> list[str]:
    return _container(docs)["args"]


def _replace_arg(docs: list[dict[str, Any]], option: str, value: str) -> None:
    args = _args(docs)
    args[args.index(option) + 1] = value


def _port(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(p for p in _container(docs)["ports"] if p["name"] == name)


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        obj = obj[key]
    obj[leaf] = value


# (what is planted, how, a word the error must contain); each on a fresh copy of rendered()
MISTAKES: list[tuple[str, Callable[[list[dict[str, Any]]], None], str]] = [
    # Kubernetes' schemas, strict
    ("misspelt probe field", lambda d: _container(d).update(readinesProbe={}), "readinesProbe"),
    ("containerPort as a string", lambda d: _port(d, "http").update(containerPort="8080"), "containerPort"),
    ("HPA utilisation as a string", lambda d: _hpa(d)["spec"]["metrics"][0]["resource"]["target"].update(
        averageUtilization="70%"), "averageUtilization"),
    ("HPA metrics as a map", lambda d: _hpa(d)["spec"].update(metrics={"cpu": 70}), "metrics"),
    ("PDB misspelt field", lambda d: the("PodDisruptionBudget", d)["spec"].update(minAvailible=1), "minAvailible"),
    ("Secret value not a string", lambda d: the("Secret", d)["stringData"].update(port=5432), "5432"),
    ("Service port as a string", lambda d: the("Service", d)["spec"]["ports"][1].update(port="50051"), "'50051'"),
    # deepseek-serve's parser and the server
    ("an option deepseek-serve lacks", lambda d: _args(d).extend(["--workers", "4"]), "unrecognized arguments"),
    ("an option's value of the wrong type", lambda d: _replace_arg(d, "--port", "http"), "invalid int value"),
    ("$(VAR) naming no env variable", lambda d: _replace_arg(d, "--jobs-db", "$(JOBS_DB)"), "names no env"),
    ("jobs in SQLite on several replicas", lambda d: the("Secret", d)["stringData"].update(
        {"jobs-db": "/tmp/jobs.sqlite"}), "postgresql://"),
    ("jobs db in the model directory", lambda d: _replace_arg(d, "--jobs-db", "/models/jobs.sqlite"), "read-only"),
    ("API key on the command line", lambda d: _args(d).extend(["--api-key", "k"]), "never from args"),
    ("a secret key not in the Secret", lambda d: _container(d)["env"][0]["valueFrom"]["secretKeyRef"].update(
        key="apikey"), "no key 'apikey'"),
    ("a command replacing the entrypoint", lambda d: _container(d).update(command=["python"]), "ENTRYPOINT"),
    ("liveness on a path the app lacks", lambda d: _set(_container(d), "livenessProbe.httpGet.path", "/health"),
     "not a route"),
    ("readiness on a path behind the API key", lambda d: _set(_container(d), "readinessProbe.httpGet.path",
                                                              "/metrics"), "not a route"),
    ("readiness on /healthz", lambda d: _set(_container(d), "readinessProbe.httpGet.path", "/healthz"), "/readyz"),
    ("probe on the gRPC port", lambda d: _set(_container(d), "startupProbe.httpGet.port", "grpc"), "http port"),
    ("container port not the args' port", lambda d: _port(d, "http").update(containerPort=8000), "expected http"),
    ("model volume writable", lambda d: _container(d)["volumeMounts"][0].pop("readOnly"), "readOnly"),
    ("model volume not the PVC", lambda d: _pod(d)["spec"]["volumes"][0]["persistentVolumeClaim"].update(
        claimName="models"), "PersistentVolumeClaim"),
    ("root filesystem writable", lambda d: _container(d)["securityContext"].pop("readOnlyRootFilesystem"),
     "readOnlyRootFilesystem"),
    ("another user than the image's", lambda d: _pod(d)["spec"]["securityContext"].update(runAsUser=1000),
     "runAsUser"),
    ("bound to loopback", lambda d: _replace_arg(d, "--host", "127.0.0.1"), "--host"),
    # the objects around the Deployment
    ("Service port number differs", lambda d: the("Service", d)["spec"]["ports"][1].update(port=9090), "Service port"),
    ("Service without the gRPC port", lambda d: the("Service", d)["spec"]["ports"].pop(), "each container port"),
    ("Service selecting other pods", lambda d: the("Service", d)["spec"].update(selector={"app": "x"}), "selector"),
    ("PDB selecting other pods", lambda d: the("PodDisruptionBudget", d)["spec"]["selector"].update(
        matchLabels={"app": "x"}), "selector"),
    ("HPA on another Deployment", lambda d: the("HorizontalPodAutoscaler", d)["spec"]["scaleTargetRef"].update(
        name="serve"), "scaleTargetRef"),
    ("HPA on a metric not exported", lambda d: _hpa(d)["spec"]["metrics"][1]["pods"]["metric"].update(
        name="ds_serve_queue_length"), "not a gauge"),
    ("HPA on a gauge no adapter rule serves", lambda d: _hpa(d)["spec"]["metrics"][1]["pods"]["metric"].update(
        name="ds_serve_jobs"), "no prometheus-adapter rule"),
    ("HPA on a counter", lambda d: _hpa(d)["spec"]["metrics"][1]["pods"]["metric"].update(name="ds_serve_requests"),
     "not a gauge"),
    ("HPA queue target at --max-queue", lambda d: _hpa(d)["spec"]["metrics"][1]["pods"]["target"].update(
        averageValue="256"), "below --max-queue"),
    ("torch threads not the CPU request", lambda d: _container(d)["resources"]["requests"].update(cpu="4"),
     "OMP_NUM_THREADS"),
    ("no CPU request", lambda d: _container(d)["resources"]["requests"].pop("cpu"), "CPU request"),
    ("PDB blocking every drain", lambda d: the("PodDisruptionBudget", d)["spec"].update(minAvailable=2), "drain"),
    ("replicas fixed beside the HPA", lambda d: _deployment(d)["spec"].update(replicas=3), "HPA owns"),
]  # fmt: skip


@pytest.mark.parametrize(("plant", "expected"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_planted_mistake_in_the_manifests_is_caught(plant: Callable, expected: str) -> None:
    docs = rendered()
    plant(docs)
    # the API server refuses an object its schema rejects, so the cross-checks read only well-formed ones
    errors = [e for d in docs for e in schema_errors(d)] or deployment_errors(docs) + cluster_errors(docs)
    assert any(expected in e for e in errors), errors


ADAPTER_MISTAKES: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], None], str]] = [
    ("misspelt rule field", lambda r, v: r.update(metricQuery=r.pop("metricsQuery")), "metricQuery"),
    ("seriesQuery of another metric", lambda r, v: r.update(seriesQuery='ds_serve_queue{pod!=""}'), "seriesQuery"),
    ("name.matches missing the series", lambda r, v: r["name"].update(matches="^queue_depth$"), "does not match"),
    ("no pod label mapping", lambda r, v: r["resources"]["overrides"].pop("pod"), "namespace and pod"),
    ("override without its resource", lambda r, v: r["resources"]["overrides"].update(namespace={}), "resource"),
    ("two filters in one", lambda r, v: r.update(seriesFilters=[{"is": "a", "isNot": "b"}]), "seriesFilters"),
    ("values naming another ConfigMap", lambda r, v: v["rules"].update(existing="adapter-config"), "rules.existing"),
]  # fmt: skip


@pytest.mark.parametrize(("plant", "expected"), [m[1:] for m in ADAPTER_MISTAKES], ids=[m[0] for m in ADAPTER_MISTAKES])
def test_a_planted_mistake_in_the_adapter_config_is_caught(plant: Callable, expected: str) -> None:
    config_map, values = adapter(), yaml.safe_load((ADAPTER / "values.yaml").read_text())
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    plant(config["rules"][0], values)
    config_map["data"]["config.yaml"] = yaml.safe_dump(config)
    errors = adapter_errors(config_map, values)
    assert any(expected in e for e in errors), errors


DOCKERFILE_MISTAKES: list[tuple[str, str, str, str]] = [
    ("runs as root", "USER 10001:10001", "USER root", "numeric, non-zero UID"),
    ("runs as UID 0", "USER 10001:10001", "USER 0", "numeric, non-zero UID"),
    ("no USER", "USER 10001:10001\n", "", "numeric, non-zero UID"),
    ("gRPC port not exposed", "EXPOSE 8080 50051", "EXPOSE 8080", "EXPOSE [8080]"),
    ("misspelt option in CMD", '"--grpc-port", "50051"', '"--grpc-prot", "50051"', "unrecognized arguments"),
    ("shell-form CMD", 'CMD ["--model_dir"', 'CMD --model_dir ["', "JSON arrays"),
    ("jobs db in the model dir", "/var/lib/deepseek-serve/jobs.sqlite", "/models/jobs.sqlite", "mounted read-only"),
    ("jobs db left at its default", ', \\\n     "--jobs-db", "/var/lib/deepseek-serve/jobs.sqlite"]', "]",
     "mounted read-only"),
    ("jobs dir not owned by the user", "chown 10001:10001 /var/lib/deepseek-serve", "true", "owned by UID"),
    ("install without constraints", '-c constraints.txt ".[${EXTRAS}]"', '".[${EXTRAS}]"', "constraints.txt"),
    ("no postgres extra", "ARG EXTRAS=serve,grpc,postgres", "ARG EXTRAS=serve,grpc", "postgres"),
    ("torch from the default index", '--index-url "${TORCH_INDEX_URL}" ', "", "TORCH_INDEX_URL"),
    ("shell-form ENTRYPOINT", 'ENTRYPOINT ["deepseek-serve"]', "ENTRYPOINT deepseek-serve", "JSON arrays"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "expected"), [m[1:] for m in DOCKERFILE_MISTAKES],
                         ids=[m[0] for m in DOCKERFILE_MISTAKES])  # fmt: skip
def test_a_planted_mistake_in_the_dockerfile_is_caught(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the plant's text {old!r} is no longer in {DOCKERFILE}"
    errors = dockerfile_errors(text.replace(old, new, 1))
    assert any(expected in e for e in errors), errors


def _docs_yaml() -> list[Any]:
    from tests.test_readme import readme_blocks

    return [
        yaml.safe_load(b.code) for b in readme_blocks((REPO / "docs" / "deploy.md").read_text()) if b.lang == "yaml"
    ]


def test_the_docs_show_the_shipped_adapter_rule() -> None:
    shown = [y for y in _docs_yaml() if isinstance(y, dict) and "rules" in y]
    assert shown == [yaml.safe_load(adapter()["data"]["config.yaml"])]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (its kustomize renders offline)")
def test_the_docs_cuda_overlay_renders_a_valid_gpu_deployment(tmp_path: Path) -> None:
    (overlay,) = [y for y in _docs_yaml() if isinstance(y, dict) and y.get("kind") == "Kustomization"]
    (tmp_path / "deploy").symlink_to(DEPLOY)  # the overlay sits beside deploy/, as the docs say
    (tmp_path / "serving-cuda").mkdir()
    (tmp_path / "serving-cuda" / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path / "serving-cuda")], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    docs = list(yaml.safe_load_all(out.stdout))
    assert [e for d in docs for e in schema_errors(d)] == []
    assert deployment_errors(docs) == [] and cluster_errors(docs) == []
    assert _container(docs)["image"].endswith("/deepseek-serve:cuda")
    assert _container(docs)["resources"]["limits"]["nvidia.com/gpu"] == 1
