"""``deepseek comm predict`` (issue 18) in-process on the bundled quick-start config: the gradient bytes of the
model, the cost model's rows per world size, ``--profile``, the presets list, and bad input as one-line exit 2."""

from __future__ import annotations

import json

import pytest

from deepseek.cli.main import main
from deepseek.distributed import cost

CONFIG = "configs/quickstart.yaml"


def _json(capsys, *argv: str) -> dict:
    assert main(["comm", "predict", CONFIG, *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_reports_the_models_gradients_and_the_cost_models_rows(capsys):
    from deepseek.config import load_config
    from deepseek.train.plan_inputs import meta_model

    out = _json(capsys, "--world", "8..16", "--interconnect", "dgx-a100", "--compute-ms", "100")
    params = sum(p.numel() for p in meta_model(load_config(CONFIG, [])).parameters() if p.requires_grad)
    assert out["gradient_bytes"] == 4 * params and out["compute_ms"] == 100
    assert list(out["worlds"]) == ["8", "16"]
    rows = {r["mode"]: r for r in out["worlds"]["16"]}
    assert list(rows) == list(cost.MODES)  # the model's shapes are known, so PowerSGD is there too
    # one bucket (the model is under 1 MiB): the ring's time is one all-reduce over 2 DGX A100 nodes
    ring = cost.collective_time(cost.preset("dgx-a100"), "all_reduce", 16, 4 * params)
    assert rows["ring"]["comm_ms"] == pytest.approx(ring * 1e3)
    assert rows["ring"]["share_no_overlap"] == pytest.approx(ring / (0.1 + ring))
    assert rows["ring"]["exposed_ms"] == pytest.approx(ring * 1e3)  # one bucket: it follows the backward pass
    assert rows["ring"]["hidden"] == (ring <= 0.01 * 0.1)  # hidden: adds at most 1% to the 100 ms step
    assert rows["hierarchical"]["comm_ms"] < rows["ring"]["comm_ms"]  # 2 nodes: fewer steps at the 4 us latency


def test_predict_plain_table_with_a_profiled_compute_time_and_local_constants(capsys, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"alpha": 1e-4, "beta": 1e-9, "gamma": 0.0, "world": 2, "backend": "gloo"}))
    assert main(["comm", "predict", CONFIG, "--world", "2,4", "--interconnect", str(bench), "--profile"]) == 0
    out = capsys.readouterr().out
    assert "(profiled on CPU)" in out and "interconnect local" in out and "world 4" in out
    compute_ms = float(out.split("compute ")[1].split(" ms")[0])
    assert compute_ms > 0
    assert "hierarchical+bf16" in out


def test_interconnect_list_prints_every_preset_with_its_source(capsys):
    assert main(["comm", "predict", "--interconnect", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cost.CLUSTERS) and "ConnectX-6" in out and "local:ALPHA,BETA" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--interconnect", "infiniband", "--compute-ms", "10"], "error: interconnect: 'infiniband'; allowed: dgx-a100"),
    (["--world", "16..x", "--compute-ms", "10"], "error: --world: '16..x'; allowed: LO..HI"),
    (["--world", "0", "--compute-ms", "10"], "error: --world: '0'; allowed"),
    (["--world", "12", "--compute-ms", "10"], "error: --world 12 on dgx-a100: ranks per node g: 8 for p=12"),
    (["--world", "16"], "error: --compute-ms / --profile: give exactly one"),
    (["--compute-ms", "-1"], "error: --compute-ms: -1.0; allowed"),
    (["--interconnect", "local:1e-5", "--compute-ms", "10"], "error: interconnect: 'local:1e-5'; allowed"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(["comm", "predict", CONFIG, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
