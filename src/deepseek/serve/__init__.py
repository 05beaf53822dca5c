"""Serving: ``deepseek-serve --model_dir DIR`` and ``ds.serve.Client``.

Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client, httpx):
``pip install 'deepseek-framework[serve]'``.
"""

from __future__ import annotations

from deepseek.serve.app import create_app
from deepseek.serve.batching import Batcher, QueueFull
from deepseek.serve.client import Client, ServeError
from deepseek.serve.model import ServedModel
from deepseek.serve.repository import ModelDirError, discover
from deepseek.serve.server import Server, ServeSettings
from deepseek.serve.spec import InputSpec, SpecError, TensorSpec

__all__ = [
    "Batcher",
    "Client",
    "InputSpec",
    "ModelDirError",
    "QueueFull",
    "ServeError",
    "ServeSettings",
    "Server",
    "ServedModel",
    "SpecError",
    "TensorSpec",
    "create_app",
    "discover",
]
