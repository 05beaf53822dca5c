"""The README's quick start installs the core package only (`pip install -e .`): every command's parser is built on
each call, so building it must not need an extra (optuna for `deepseek nas`, found missing by running the README)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_cli_parses_and_lists_without_the_optional_extras():
    code = textwrap.dedent("""
        import sys
        for extra in ("optuna", "openvino", "nncf", "executorch", "coremltools", "ai_edge_litert", "grpc", "plotly",
                      "fastapi", "onnxruntime", "torchao"):
            sys.modules[extra] = None  # import fails as if it were not installed
        from deepseek.cli.main import main
        sys.exit(main(["list", "optimizers"]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "adamw" in done.stdout.lower()
