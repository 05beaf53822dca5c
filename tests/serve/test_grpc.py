"""gRPC beside REST: a real ``deepseek serve --grpc-port 0 --api-key ...`` process, the generated stub and
``ds.serve.Client("grpc://...")``, each mode compared with the REST answer of the same process, reflection,
health, and every refusal's status code. One server process for the module (module-scoped)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")

from deepseek.serve import ServeError  # noqa: E402
from deepseek.serve.proto import PROTO_PATH, SERVICE  # noqa: E402
from tests.serve.conftest import ServerProcess, digits_samples  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "grpc-test-key"
AUTH = (("authorization", f"Bearer {KEY}"),)
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(ServerProcess, grpc target)``: REST and gRPC of one process, both behind the API key."""
    jobs = tmp_path_factory.mktemp("grpc-jobs") / "jobs.sqlite"
    s = ServerProcess(model_dir, "--jobs-db", str(jobs), "--max-body-mb", "0.25", "--api-key", KEY,
                      "--grpc-port", "0").start()  # fmt: skip
    try:
        assert s.wait_for_output("gRPC listening on"), s.output_tail()
        port = re.search(r"gRPC listening on 127\.0\.0\.1:(\d+)", s.output_tail()).group(1)
        yield s, f"127.0.0.1:{port}"
    finally:
        s.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def stub(served):
    from deepseek.serve.proto import deepseek_serve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(served[1]) as channel:
        yield pb_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def clients(served):
    """``(rest, grpc)``: ds.serve.Client over each protocol."""
    import deepseek as ds

    s, target = served
    with s.client(api_key=KEY) as rest, ds.serve.Client(f"grpc://{target}", api_key=KEY, timeout=60) as over_grpc:
        yield rest, over_grpc


def pb():
    from deepseek.serve.proto import deepseek_serve_pb2

    return deepseek_serve_pb2


def refusal(call, *args, **kwargs) -> tuple[grpc.StatusCode, dict[str, str], str]:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kwargs)
    return e.value.code(), dict(e.value.trailing_metadata() or ()), e.value.details()


def predict_request(model: str, instances: list, **kwargs):
    from deepseek.serve.proto.values import to_list_value

    return pb().PredictRequest(model=model, instances=to_list_value(instances), **kwargs)


def test_shipped_pb2_files_are_what_protoc_makes_of_the_shipped_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    import importlib.resources

    rel = "deepseek/serve/proto/deepseek_serve.proto"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(PROTO_PATH.read_bytes())
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    out = f"{tmp_path}/out"
    Path(out).mkdir()
    argv = ["protoc", f"-I{tmp_path}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", str(tmp_path / rel)]  # fmt: skip
    assert protoc.main(argv) == 0
    for name in ("deepseek_serve_pb2.py", "deepseek_serve_pb2.pyi", "deepseek_serve_pb2_grpc.py"):
        made = (Path(out) / "deepseek/serve/proto" / name).read_text()
        stale = f"{name} is not what protoc makes of the .proto: run deepseek.serve.proto.REGENERATE"
        assert made == (PROTO_PATH.parent / name).read_text(), stale


def test_predict_over_grpc_equals_rest_and_is_counted(served, stub, clients):
    rest, over_grpc = clients
    x, labels = digits_samples(5)
    for version in (None, "onnx"):
        want = rest.predict("digits", x, version=version)
        assert over_grpc.predict("digits", x, version=version) == want
    reply = stub.Predict(predict_request("digits", x), metadata=AUTH)
    assert (reply.model, reply.version) == ("digits", "1")
    from deepseek.serve.proto.values import from_list_value

    assert from_list_value(reply.predictions) == rest.predict("digits", x)
    assert over_grpc.predict("probe", [[1, 2, 3, 4]])[0][0] == 10  # a whole number reads back as an int
    assert {(m["name"], m["version"]) for m in over_grpc.models()} == {(m["name"], m["version"]) for m in rest.models()}
    assert over_grpc.models() == rest.models()
    from prometheus_client.parser import text_string_to_metric_families

    counted = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(rest.http.get("/metrics").text)
               for s in f.samples if s.name == "ds_serve_requests_total"}  # fmt: skip
    grpc_predict = (("code", "200"), ("model", "digits"), ("route", f"grpc:/{SERVICE}/Predict"))
    assert counted[grpc_predict] >= 3  # the same counters as REST's routes


def test_jobs_over_grpc_submit_get_cancel_and_idempotency(stub, clients):
    rest, over_grpc = clients
    x, _ = digits_samples(3)
    job = over_grpc.submit("digits", x)
    done = over_grpc.wait(job)
    assert done["status"] == "succeeded" and done["result"] == rest.predict("digits", x)
    assert over_grpc.job(job) == rest.job(job)  # the same job, the same fields, over both protocols
    code, meta, _ = refusal(stub.CancelJob, pb().JobRequest(id=job), metadata=AUTH)
    assert (code, meta["http-status"]) == (Code.FAILED_PRECONDITION, "409")
    with pytest.raises(ServeError) as e:
        over_grpc.cancel(job)
    assert e.value.status == 409
    # idempotency: the same key and request -> the same job (created False); another request -> ALREADY_EXISTS
    from deepseek.serve.proto.values import to_list_value

    submit = pb().SubmitJobRequest(model="probe", instances=to_list_value([[1, 2, 3, 4]]), idempotency_key="k-1")
    first, again = stub.SubmitJob(submit, metadata=AUTH), stub.SubmitJob(submit, metadata=AUTH)
    assert first.created and not again.created and first.id == again.id
    assert over_grpc.submit("probe", [[1, 2, 3, 4]], idempotency_key="k-1") == first.id
    other = pb().SubmitJobRequest(model="probe", instances=to_list_value([[5, 6, 7, 8]]), idempotency_key="k-1")
    code, meta, _ = refusal(stub.SubmitJob, other, metadata=AUTH)
    assert (code, meta["http-status"]) == (Code.ALREADY_EXISTS, "409")
    assert over_grpc.wait(first.id)["idempotency_key"] == "k-1"
    # cancel before it ends: the slow model sleeps 1 s on this sample
    slow = over_grpc.submit("slow", [[-1, 1.0, 0, 0]])
    assert over_grpc.cancel(slow)["status"] == "cancelled"
    assert over_grpc.wait(slow)["status"] == "cancelled" and "result" not in over_grpc.job(slow)
    code, meta, _ = refusal(stub.GetJob, pb().JobRequest(id="no-such-job"), metadata=AUTH)
    assert (code, meta["http-status"]) == (Code.NOT_FOUND, "404")


def test_streams_over_grpc_equal_the_rest_sse(stub, clients):
    rest, over_grpc = clients
    params = {"max_new_tokens": 6}
    want = list(rest.stream("gpt2", "the weather today is", params))
    got = list(over_grpc.stream("gpt2", "the weather today is", params))
    assert got == want and [e["event"] for e in got] == ["token"] * 6 + ["done"]
    assert got[-1]["token_ids"] == [e["token_id"] for e in got[:-1]]
    messages = list(stub.Stream(predict_request("gpt2", ["the weather today is"], parameters=params_struct(params)),
                                metadata=AUTH))  # fmt: skip
    assert [m.WhichOneof("event") for m in messages] == ["token"] * 6 + ["done"]
    assert [m.token.token_id for m in messages[:-1]] == [e["token_id"] for e in want[:-1]]
    x, _ = digits_samples(3)
    chunks = list(over_grpc.stream("digits", x, chunks=True))
    assert chunks == list(rest.stream("digits", x, chunks=True))
    # one chunk a forward pass: the labels of one batch of three, scores within a batch's rounding
    assert [c["prediction"]["label"] for c in chunks[:3]] == [p["label"] for p in rest.predict("digits", x)]
    assert chunks[3] == {"event": "done", "chunks": 3}
    code, meta, message = refusal(lambda: list(stub.Stream(predict_request("gpt2", ["hi"], parameters=params_struct(
        {"max_new_tokens": 500})), metadata=AUTH)))  # fmt: skip
    assert (code, meta["http-status"]) == (Code.INVALID_ARGUMENT, "422") and "max_new_tokens" in message
    with pytest.raises(ServeError) as e:
        list(over_grpc.stream("nope", "hi"))
    assert e.value.status == 404
    # an error mid-stream (the probe raises on the second chunk): the first result, then the error's status
    for client in (rest, over_grpc):
        seen = []
        with pytest.raises(ServeError) as e:
            seen.extend(client.stream("probe", [[1, 2, 3, 4], [13, 0, 0, 0]], chunks=True))
        assert [s["event"] for s in seen] == ["result"] and e.value.status == 500 and "unlucky 13" in e.value.message
    # a reader that stops early cancels the call; the server streams on for the next one
    tokens = over_grpc.stream("gpt2", "the weather today is", {"max_new_tokens": 30})
    assert next(tokens) == want[0]
    tokens.close()
    assert list(over_grpc.stream("gpt2", "the weather today is", params)) == want


def params_struct(params: dict):
    from deepseek.serve.proto.values import to_struct

    return to_struct(params)


def test_reflection_and_health_are_open_and_list_the_service(served, clients):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(served[1]) as channel:  # no API key: reflection and health stay open
        db = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(db.get_services())
        service = DescriptorPool(db).FindServiceByName(SERVICE)
        methods = {"Predict", "SubmitJob", "GetJob", "CancelJob", "Stream", "ListModels"}
        assert {m.name for m in service.methods} == methods
        assert service.methods_by_name["Stream"].server_streaming
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert clients[1].ready()


def test_every_refusal_has_its_status_code(stub, clients):
    rest, over_grpc = clients
    x, _ = digits_samples(1)
    cases = [  # (request, metadata, gRPC code, REST status)
        (predict_request("nope", x), AUTH, Code.NOT_FOUND, 404),
        (predict_request("digits", x, version="9"), AUTH, Code.NOT_FOUND, 404),
        (predict_request("digits", [[1, 2]]), AUTH, Code.INVALID_ARGUMENT, 422),
        (predict_request("digits", [[[[float("nan")] * 8] * 8]]), AUTH, Code.INVALID_ARGUMENT, 422),
        (predict_request("digits", x, timeout_s=-1), AUTH, Code.INVALID_ARGUMENT, 422),
        (predict_request("probe", [[13, 0, 0, 0]]), AUTH, Code.INTERNAL, 500),
        (predict_request("slow", [[-1, 1.0, 0, 0]], timeout_s=0.2), AUTH, Code.DEADLINE_EXCEEDED, 504),
        (predict_request("digits", x), (), Code.UNAUTHENTICATED, 401),
        (predict_request("digits", x), (("authorization", "Bearer wrong"),), Code.UNAUTHENTICATED, 401),
        (predict_request("digits", x), (("x-api-key", "wrong"),), Code.UNAUTHENTICATED, 401),
    ]
    for request, metadata, code, status in cases:
        got, meta, message = refusal(stub.Predict, request, metadata=metadata)
        assert (got, meta.get("http-status")) == (code, str(status)), (request, message)
    assert stub.Predict(predict_request("digits", x), metadata=(("x-api-key", KEY),)).model == "digits"
    # the call's deadline is the time budget when it is sooner: the model sleeps 1 s, the deadline is 0.2 s
    got, _, _ = refusal(stub.Predict, predict_request("slow", [[-1, 1.0, 0, 0]]), metadata=AUTH, timeout=0.2)
    assert got == Code.DEADLINE_EXCEEDED
    # over --max-body-mb 0.25: refused by grpc itself (no http-status), read by the client as 413
    big = [[[[0.5] * 8] * 8]] * 2000
    got, meta, _ = refusal(stub.Predict, predict_request("digits", big), metadata=AUTH)
    assert got == Code.RESOURCE_EXHAUSTED and "retry-after" not in meta
    with pytest.raises(ServeError) as e:
        over_grpc.predict("digits", big)
    assert (e.value.status, e.value.retry_after) == (413, None)
    # a full queue (slow: one at a time, 2 queued): RESOURCE_EXHAUSTED with retry-after, the client's 429
    calls = [stub.Predict.future(predict_request("slow", [[-1, 0.3, 0, 0]]), metadata=AUTH) for _ in range(6)]
    outcomes = [c.exception() for c in calls]
    full = [o for o in outcomes if o is not None]
    assert full and all(o.code() == Code.RESOURCE_EXHAUSTED for o in full)
    assert all(dict(o.trailing_metadata())["http-status"] == "429" and "retry-after" in dict(o.trailing_metadata())
               for o in full)  # fmt: skip
    with pytest.raises(ServeError) as e:
        rest.predict("nope", x)
    assert e.value.status == 404


def test_client_errors_over_grpc_match_rest(served, clients):
    import deepseek as ds

    rest, over_grpc = clients
    x, _ = digits_samples(1)
    for call in (lambda c: c.predict("nope", x), lambda c: c.predict("digits", [[1, 2]]),
                 lambda c: c.predict("probe", [[13, 0, 0, 0]]), lambda c: c.job("no-such-job"),
                 lambda c: c.predict("slow", [[-1, 1.0, 0, 0]], timeout_s=0.2)):  # fmt: skip
        statuses = []
        for client in (rest, over_grpc):
            with pytest.raises(ServeError) as e:
                call(client)
            statuses.append(e.value.status)
        assert statuses[0] == statuses[1] and statuses[0] in (404, 422, 500, 504)
    with ds.serve.Client(f"grpc://{served[1]}") as keyless, pytest.raises(ServeError) as e:
        keyless.models()
    assert e.value.status == 401
    with ds.serve.Client(f"grpc://{served[1]}", api_key="wrong") as wrong, pytest.raises(ServeError) as e:
        wrong.predict("digits", x)
    assert e.value.status == 401


def test_a_bad_grpc_port_is_a_one_line_usage_error(model_dir, capsys):
    import argparse

    from deepseek.cli.dispatch import run_command
    from deepseek.cli.serve_cmd import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for value in ("-1", "70000", "18089"):  # 18089: the same as --port
        args = parser.parse_args(["--model_dir", str(model_dir), "--port", "18089", "--grpc-port", value])
        assert run_command(args) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: --grpc-port:") and value in line and "0..65535" in line, line
