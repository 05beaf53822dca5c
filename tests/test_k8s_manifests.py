"""The Kubernetes example (examples/k8s/) is a job a cluster would accept, checked offline (issue 15).

- The PyTorchJob against the Kubeflow training operator's published CRD schema (shipped in
  tests/fixtures/k8s/, see its header), read the way ``kubectl apply --validate=strict`` reads it: a field the
  schema does not name is an error, not silently pruned; plus the operator's admission-webhook rules
  (pkg/webhooks/pytorch/pytorchjob_webhook.go: replica types Master/Worker, one Master, a container named
  ``pytorch`` with an image, a DNS-1035 job name).
- Each replica's pod template, and every built-in kind (ConfigMap, PersistentVolumeClaim), against the
  Kubernetes schemas that ``kubernetes-validate`` ships (strict: unknown fields are errors; no network).
- The container's command is parsed by torchrun's own parser and then by ``deepseek``'s: a real
  ``deepseek train`` of a config from configs/, mounted from the ConfigMap, writing to the shared volume.
Each check is shown to fail on a planted mistake.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "k8s"
CRD = Path(__file__).resolve().parent / "fixtures" / "k8s" / "kubeflow.org_pytorchjobs.yaml"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests target; kubernetes-validate picks its schemas
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
REPLICA_TYPES = ("Master", "Worker")  # the only two the operator's webhook admits for a PyTorchJob


def manifests() -> list[dict[str, Any]]:
    """Every object of every examples/k8s/*.yaml file, in file order."""
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def the(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The one object of ``kind`` among ``docs`` (default: the examples)."""
    found = [d for d in (manifests() if docs is None else docs) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {EXAMPLES}, found {len(found)}"
    return found[0]


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that lists its properties and
    neither sets additionalProperties nor preserves unknown fields: the API server's strict field validation
    (kubectl's default) rejects a misspelt field, where plain structural pruning would drop it silently."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top)"


def crd_errors(job: dict[str, Any]) -> list[str]:
    """What the PyTorchJob CRD's ``openAPIV3Schema`` (of the served version ``job`` names) says is wrong."""
    crd = yaml.safe_load(CRD.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    served = {f"{group}/{v['name']}": v for v in crd["spec"]["versions"] if v["served"]}
    if job.get("kind") != kind:
        return [f"kind: {job.get('kind')!r}, expected {kind!r}"]
    if job.get("apiVersion") not in served:
        return [f"apiVersion: {job.get('apiVersion')!r} is not served; served: {sorted(served)}"]
    schema = strict(served[job["apiVersion"]]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{_where(e)}: {e.message}" for e in validator.iter_errors(job)]


def webhook_errors(job: dict[str, Any]) -> list[str]:
    """The training operator's admission rules for a PyTorchJob, beyond what its schema can say."""
    errors, name = [], job.get("metadata", {}).get("name", "")
    if not (DNS_1035.fullmatch(name) and len(name) <= 63):
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    for rtype, replica in job.get("spec", {}).get("pytorchReplicaSpecs", {}).items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            errors.append(f"{where}: replica type {rtype!r} is not supported; allowed: {', '.join(REPLICA_TYPES)}")
        replicas = replica.get("replicas")
        if rtype == "Master" and replicas != 1:
            errors.append(f"{where}.replicas: {replicas!r}, must be 1")
        elif isinstance(replicas, int) and replicas < 1:
            errors.append(f"{where}.replicas: {replicas!r}, must be at least 1")
        containers = replica.get("template", {}).get("spec", {}).get("containers", [])
        pytorch = [c for c in containers if c.get("name") == "pytorch"]
        if not pytorch:
            errors.append(f"{where}.template.spec.containers: no container named 'pytorch'")
        errors += [
            f"{where}.template.spec.containers[{c['name']}].image: required" for c in containers if not c.get("image")
        ]
    return errors


def builtin_errors(obj: dict[str, Any]) -> list[str]:
    """What the Kubernetes schema of a built-in kind (kubernetes-validate, strict, offline) says is wrong."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{obj.get('kind')} {obj.get('apiVersion')}: no such built-in kind in Kubernetes {K8S_VERSION}"]
    except kubernetes_validate.ValidationError as e:
        return [f"{obj.get('kind')} {'.'.join(str(p) for p in e.path)}: {e.message}"]
    return []


def pod_template_errors(job: dict[str, Any]) -> list[str]:
    """Each replica's ``template`` checked as the core/v1 PodTemplateSpec it is (the CRD embeds that type)."""
    errors = []
    for rtype, replica in job.get("spec", {}).get("pytorchReplicaSpecs", {}).items():
        holder = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{rtype.lower()}-template"},
                  "template": replica.get("template", {})}  # fmt: skip
        errors += [f"spec.pytorchReplicaSpecs.{rtype}: {e}" for e in builtin_errors(holder)]
    return errors


def job_errors(job: dict[str, Any]) -> list[str]:
    return crd_errors(job) + webhook_errors(job) + pod_template_errors(job)


def test_every_example_manifest_is_valid() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"PyTorchJob", "ConfigMap", "PersistentVolumeClaim"}
    for doc in docs:
        errors = job_errors(doc) if doc["kind"] == "PyTorchJob" else builtin_errors(doc)
        assert errors == [], f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def test_the_shipped_crd_names_its_source_and_license() -> None:
    header = CRD.read_text().split("\n---", 1)[0]
    for needed in ("kubeflow/training-operator", "manifests/base/crds/kubeflow.org_pytorchjobs.yaml",
                   "Apache-2.0", "commit "):  # fmt: skip
        assert needed in header
    crd = yaml.safe_load(CRD.read_text())
    assert (crd["kind"], crd["spec"]["names"]["kind"]) == ("CustomResourceDefinition", "PyTorchJob")


def _replica(job: dict[str, Any], rtype: str = "Master") -> dict[str, Any]:
    return job["spec"]["pytorchReplicaSpecs"][rtype]


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return _replica(job)["template"]["spec"]["containers"][0]


# (what is planted, how, a word the error must contain)
JOB_MISTAKES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("replicas as a word", lambda j: _replica(j, "Worker").update(replicas="two"), "not of type 'integer'"),
    ("nprocPerNode as a number", lambda j: j["spec"].update(nprocPerNode=8), "nprocPerNode: 8 is not of type 'string'"),
    ("misspelt spec field", lambda j: j["spec"].update(nprocsPerNode="8"), "nprocsPerNode"),
    ("bad apiVersion", lambda j: j.update(apiVersion="kubeflow.org/v2"), "is not served"),
    ("wrong kind", lambda j: j.update(kind="PytorchJob"), "expected 'PyTorchJob'"),
    ("unknown replica type", lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=_replica(j)), "'Chief' is not supported"),
    ("two Masters", lambda j: _replica(j).update(replicas=2), "must be 1"),
    ("container not named pytorch", lambda j: _container(j).update(name="trainer"), "no container named 'pytorch'"),
    ("no image", lambda j: _container(j).pop("image"), "image: required"),
    ("misspelt container field", lambda j: _container(j).update(comand=["deepseek"]), "comand"),
    ("volumeMounts as a map", lambda j: _container(j).update(volumeMounts={"runs": "/runs"}), "volumeMounts"),
    ("job name with capitals", lambda j: j["metadata"].update(name="DeepSeek"), "DNS-1035"),
]  # fmt: skip


@pytest.mark.parametrize(("plant", "expected"), [m[1:] for m in JOB_MISTAKES], ids=[m[0] for m in JOB_MISTAKES])
def test_a_planted_mistake_in_the_job_is_caught(plant: Callable[[dict[str, Any]], None], expected: str) -> None:
    job = copy.deepcopy(the("PyTorchJob"))
    plant(job)
    errors = job_errors(job)
    assert any(expected in e for e in errors), errors


BUILTIN_MISTAKES: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("PersistentVolumeClaim", "accessModes as a string", lambda o: o["spec"].update(accessModes="ReadWriteMany"), "accessModes"),
    ("PersistentVolumeClaim", "misspelt field", lambda o: o["spec"].update(storageClass="nfs"), "storageClass"),
    ("ConfigMap", "data value not a string", lambda o: o["data"].update(steps=100), "steps"),
    ("ConfigMap", "bad apiVersion", lambda o: o.update(apiVersion="v2"), "no such built-in kind"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "plant", "expected"), [(m[0], m[2], m[3]) for m in BUILTIN_MISTAKES],
                         ids=[f"{m[0]}: {m[1]}" for m in BUILTIN_MISTAKES])  # fmt: skip
def test_a_planted_mistake_in_a_builtin_kind_is_caught(kind: str, plant: Callable, expected: str) -> None:
    obj = copy.deepcopy(the(kind))
    assert builtin_errors(obj) == []
    plant(obj)
    errors = builtin_errors(obj)
    assert any(expected in e for e in errors), errors


def test_the_job_runs_deepseek_train_on_a_config_from_configs() -> None:
    from torch.distributed.run import parse_args as torchrun_args

    from deepseek.cli.main import build_parser
    from deepseek.config import load_config

    docs = manifests()
    job = the("PyTorchJob", docs)
    for rtype in REPLICA_TYPES:  # every pod runs the same command; torchrun gives each its node rank
        pod = _replica(job, rtype)["template"]["spec"]
        command = pod["containers"][0]["command"]
        assert command[0] == "torchrun", command
        launch = torchrun_args(command[1:])
        assert (launch.module, launch.training_script) == (True, "deepseek"), command
        train = build_parser().parse_args(launch.training_script_args)
        assert train.command == "train", command
        assert train.resume == "auto", "a restarted pod must continue the run, not stop on its run directory"

        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        config = Path(train.items[0])
        config_map = volumes[mounts[str(config.parent)]]["configMap"]["name"]
        shipped = the("ConfigMap", docs)
        assert shipped["metadata"]["name"] == config_map
        source = REPO / "configs" / config.name
        assert source.is_file(), f"{config.name} is not in configs/"
        assert shipped["data"][config.name] == source.read_text(), f"the ConfigMap's copy of {source} differs"
        load_config(str(source), train.items[1:])  # the config and its overrides are valid

        run_volume = next(volumes[name] for path, name in mounts.items() if train.run_dir.startswith(path + "/"))
        assert (
            run_volume["persistentVolumeClaim"]["claimName"] == the("PersistentVolumeClaim", docs)["metadata"]["name"]
        )

    gpus = _container(job)["resources"]["limits"]["nvidia.com/gpu"]
    assert int(job["spec"]["nprocPerNode"]) == int(gpus), "one rank per GPU: nprocPerNode must equal the GPU limit"


def _commands(page: Path) -> list[list[str]]:
    """The torchrun and ``deepseek launch`` command lines of ``page``'s bash blocks, split as bash would
    (continuation lines joined, comments dropped; ``$VARS`` stay as text)."""
    from tests.test_readme import readme_blocks

    lines = []
    for block in readme_blocks(page.read_text()):
        if block.lang == "bash":
            lines += block.code.replace("\\\n", " ").splitlines()
    found = []
    for line in lines:
        words = shlex.split(line, comments=True)
        for start in ("torchrun", "deepseek"):
            if start in words and words[words.index(start) :][:2] != ["deepseek", "train"]:
                found.append(words[words.index(start) :])
                break
    return found


def test_the_multi_node_commands_in_the_docs_parse() -> None:
    """Every torchrun and ``deepseek launch`` line of docs/distributed.md is accepted by torchrun's parser and
    then by ``deepseek``'s, and trains (or plans) a config that is in configs/."""
    from torch.distributed.run import parse_args as torchrun_args

    from deepseek.cli.main import build_parser

    commands = _commands(REPO / "docs" / "distributed.md")
    assert sum(c[0] == "torchrun" for c in commands) >= 3 and ["deepseek", "launch"] in [c[:2] for c in commands]
    for words in commands:
        if words[0] == "torchrun":
            launch = torchrun_args(words[1:])
            assert (launch.module, launch.training_script) == (True, "deepseek"), words
            assert int(launch.nproc_per_node) >= 1 and launch.nnodes, words
            args = build_parser().parse_args(launch.training_script_args)
        else:
            args = build_parser().parse_args(words[1:])
        assert args.command in ("train", "launch", "plan"), words
        config = args.config if args.command == "plan" else args.items[0]
        assert (REPO / config).is_file(), f"{config} is not in the repository: {words}"
