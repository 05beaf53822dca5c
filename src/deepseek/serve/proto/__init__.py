"""deepseek-serve's gRPC wire format: ``deepseek_serve.proto`` (shipped in the package, beside this file) and the
modules protoc generated from it: ``deepseek_serve_pb2`` (messages) and ``deepseek_serve_pb2_grpc`` (stub and
servicer). Importing this package needs no grpcio: ``PROTO_PATH`` names the file for other languages' tools.

After editing the .proto, regenerate from the repository root (``REGENERATE``). Run with ``-Isrc``, protoc
names the file ``deepseek/serve/proto/deepseek_serve.proto`` and writes the import of the messages in
``deepseek_serve_pb2_grpc.py`` as ``from deepseek.serve.proto import deepseek_serve_pb2``: it works from inside
the package as generated, with no hand edit. tests/serve/test_grpc.py checks that the shipped files are what
this command makes of the shipped .proto.
"""

from __future__ import annotations

from pathlib import Path

PROTO_PATH = Path(__file__).with_name("deepseek_serve.proto")
PACKAGE = "deepseek.serve.v1"
SERVICE = f"{PACKAGE}.Inference"
REGENERATE = (
    ".venv/bin/python -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src --grpc_python_out=src "
    "src/deepseek/serve/proto/deepseek_serve.proto"
)

__all__ = ["PACKAGE", "PROTO_PATH", "REGENERATE", "SERVICE"]
