"""The built wheel ships everything the package needs: installed alone into a clean virtual environment, it
trains the bundled quick start, lists its models, builds from its templates and serves /docs offline.

Only ``deepseek`` comes from the wheel: a ``.pth`` file appends this environment's site-packages (torch and
the rest) after the new one's, so a missing data file cannot be papered over by the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests import process_tree
from tests.conftest import REPO

SMOKE = """
import json, sys
from importlib import resources
from pathlib import Path

import deepseek
import deepseek.models

package = Path(deepseek.__file__).resolve().parent
templates = sorted(p.name for p in (resources.files("deepseek") / "models" / "templates").iterdir())
model = deepseek.models.build("simple_cnn")  # template applied: simple_cnn.yaml's width, classes

from fastapi import FastAPI
from fastapi.testclient import TestClient
from deepseek.serve.docs import ASSETS_URL, add_offline_docs

app = FastAPI(docs_url=None, redoc_url=None)
add_offline_docs(app)
client = TestClient(app)
docs = client.get("/docs")
assets = {name: client.get(f"{ASSETS_URL}/{name}").status_code
          for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")}
print(json.dumps({"package": str(package), "templates": templates, "template": deepseek.models.template("simple_cnn"),
                  "parameters": sum(p.numel() for p in model.parameters()), "docs": docs.status_code,
                  "assets": assets}))
"""


def _shipped_sources() -> list[str]:
    """Files of ``src/deepseek`` a wheel must hold, relative to ``src``: git's tracked and unignored ones."""
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "src/deepseek"],
                       cwd=REPO, capture_output=True, text=True)  # fmt: skip
    if r.returncode == 0 and r.stdout.strip():
        names = r.stdout.split()
    else:  # not a git checkout (an sdist): every file but bytecode
        names = [str(p.relative_to(REPO)) for p in (REPO / "src" / "deepseek").rglob("*") if p.is_file()]
    return sorted(
        n.removeprefix("src/")
        for n in names
        if "__pycache__" not in n and (REPO / n).is_file() and not n.endswith(".pyc")
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source tree (the checkout itself gains no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # --no-build-isolation: build with this environment's setuptools (no index is reachable here)
    r = process_tree.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "--wheel-dir", str(root / "dist"), str(source)], 300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (built,) = (root / "dist").glob("deepseek_framework-*.whl")
    return built


@pytest.mark.slow  # builds the wheel: about 20 s
def test_the_wheel_holds_every_file_of_the_package(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in _shipped_sources() if n not in names]
    assert not missing, f"{len(missing)} package file(s) not in the wheel (pyproject's package-data): {missing[:20]}"
    assert "deepseek/configs/quickstart.yaml" in names and "deepseek/py.typed" in names
    assert sum(n.startswith("deepseek/models/templates/") and n.endswith(".yaml") for n in names) >= 20


@pytest.mark.slow  # a venv, an install and a short training run: about 30 s
def test_the_installed_wheel_trains_lists_and_serves_docs(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    r = process_tree.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], 120)
    assert r.returncode == 0, r.stderr
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    r = process_tree.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          str(wheel)], 300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = process_tree.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60)
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    # a plain path line: the editable install's own .pth (pointing at src/) is not processed from there
    (Path(site.stdout.strip()) / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}

    r = process_tree.run([str(python), "-c", textwrap.dedent(SMOKE)], 300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    smoke = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(smoke["package"]).is_relative_to(venv), f"deepseek imported from {smoke['package']}, not the wheel"
    assert "simple_cnn.yaml" in smoke["templates"] and smoke["template"]["model"]["name"] == "simple_cnn"
    assert smoke["parameters"] > 0
    assert smoke["docs"] == 200 and set(smoke["assets"].values()) == {200}, smoke

    r = process_tree.run([str(bin_dir / "deepseek"), "list", "models"], 300, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "simple_cnn" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    # no config: the bundled quickstart.yaml, read from the installed package
    run_dir = tmp_path / "run"
    r = process_tree.run([str(bin_dir / "deepseek"), "train", "train.max_steps=2", "scheduler.warmup_steps=1",
                          "logging.progress=off",
                          "--run-dir", str(run_dir)], 300, cwd=tmp_path, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (run_dir / "final" / "model.safetensors").is_file()
