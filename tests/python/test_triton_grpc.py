"""The real `tritonclient[grpc]` client through shardgate's GRPC listener.

Two simulated KServe v2 gRPC servers (`shardgate-sim`, models `resnet` and `bert`)
behind `shardgate serve` with a GRPC listener and a GRPCRoute that routes the KServe
service by model (`model_name` of each call). Checks, as an application would see
them: server liveness, model readiness, `infer` on each model (answered by the server
that serves it), streaming infer, and `NOT_FOUND` for an unknown model.
Run by scripts/test with a virtualenv that has tritonclient[grpc] and numpy.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.environ.get("SHARDGATE_BIN", os.path.join(TARGET, "debug", "shardgate"))
SIM = os.environ.get("SHARDGATE_SIM_BIN", os.path.join(TARGET, "debug", "shardgate-sim"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)  # polling interval of a deadline-bounded poll
    raise RuntimeError(f"{what} did not listen on {port} in 30 s")


def config(sims):
    y = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: shardgate
  listeners:
  - {name: inference-grpc, protocol: GRPC, port: 50051}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: kserve, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: inference-grpc}]
  rules:
"""
    for model, port in sims:
        y += f"""  - matches:
    - method: {{service: inference.GRPCInferenceService}}
      headers: [{{name: X-Gateway-Model-Name, value: {model}}}]
    backendRefs: [{{name: svc-{model}, port: 8000}}]
"""
    # Calls that name no model (ServerLive, ServerReady, ServerMetadata) go to any
    # server; a model no rule names is then NOT_FOUND.
    y += "  - matches:\n    - method: {type: RegularExpression, service: 'inference\\.GRPCInferenceService', method: 'Server.*'}\n    backendRefs:\n"
    for model, _ in sims:
        y += f"    - {{name: svc-{model}, port: 8000}}\n"
    for model, port in sims:
        y += f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{model}
  namespace: default
  labels: {{kubernetes.io/service-name: svc-{model}}}
addressType: IPv4
ports: [{{port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""
    return y


def main():
    procs = []
    failures = 0
    passed = 0
    try:
        sims = []
        for model in ["resnet", "bert"]:
            port = free_port()
            p = subprocess.Popen([SIM, "--host", "127.0.0.1", "--port", str(port), "--model", model],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p, f"shardgate-sim {model}")
            sims.append((model, port))
        d = tempfile.mkdtemp(prefix="shardgate-triton-")
        cfg = os.path.join(d, "gw.yaml")
        with open(cfg, "w") as f:
            f.write(config(sims))
        ready = os.path.join(d, "ready.json")
        gw = subprocess.Popen([BIN, "serve", "-c", cfg, "--bind", "127.0.0.1", "--listen-port", "0",
                               "--admin-addr", "off", "--shards", "1", "--ready-file", ready],
                              stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(gw)
        deadline = time.monotonic() + 30
        addr = None
        while time.monotonic() < deadline and addr is None:
            if gw.poll() is not None:
                raise RuntimeError(f"shardgate exited with {gw.returncode}")
            try:
                with open(ready) as f:
                    addr = json.load(f)["listen"][0]
            except (OSError, ValueError):
                time.sleep(0.02)  # polling interval of a deadline-bounded poll
        if addr is None:
            raise RuntimeError("shardgate did not become ready in 30 s")

        client = grpcclient.InferenceServerClient(url=addr)

        def case(name, fn):
            nonlocal failures, passed
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every failure
                failures += 1
                print(f"FAIL {name}: {e!r}")

        def inputs(values):
            x = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
            x.set_data_from_numpy(values)
            return [x]

        def live_and_ready():
            assert client.is_server_live()
            assert client.is_model_ready("bert")
            assert client.is_model_ready("resnet")

        def infer_each_model():
            for model in ["resnet", "bert", "resnet"]:
                v = np.arange(6, dtype=np.float32).reshape(2, 3) * (2 if model == "bert" else 1)
                r = client.infer(model, inputs(v), outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
                assert r.get_response().model_name == model, r.get_response()
                np.testing.assert_array_equal(r.as_numpy("OUTPUT0").reshape(2, 3), v)

        def compressed_infer_routed_by_model():
            # tritonclient compresses the request (grpc-encoding gzip or
            # deflate); the gateway reads model_name from the inflated first
            # bytes, the sim inflates the whole message.
            for algo, model in [("gzip", "resnet"), ("deflate", "bert"), ("gzip", "bert")]:
                v = np.arange(4096, dtype=np.float32).reshape(64, 64) + (1 if model == "bert" else 0)
                r = client.infer(model, inputs(v), outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
                                 compression_algorithm=algo)
                assert r.get_response().model_name == model, (algo, r.get_response())
                np.testing.assert_array_equal(r.as_numpy("OUTPUT0").reshape(64, 64), v)

        def unknown_model_is_not_found():
            try:
                client.infer("llama", inputs(np.zeros((1, 1), dtype=np.float32)))
            except InferenceServerException as e:
                assert "NOT_FOUND" in str(e.status()), (e.status(), e.message())
                return
            raise AssertionError("an unknown model was answered")

        def stream_infer():
            got = []

            def callback(result, error):
                got.append((result, error))

            client.start_stream(callback=callback)
            for i in range(3):
                v = np.full((1, 4), i, dtype=np.float32)
                client.async_stream_infer("bert", inputs(v), request_id=str(i))
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)  # polling interval of a deadline-bounded poll
            client.stop_stream()
            assert len(got) == 3, got
            for i, (result, error) in enumerate(got):
                assert error is None, error
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(1, 4), np.full((1, 4), i, dtype=np.float32))

        case("server live, models ready", live_and_ready)
        case("infer routed by model", infer_each_model)
        case("compressed infer (gzip, deflate) routed by model", compressed_infer_routed_by_model)
        case("unknown model: NOT_FOUND", unknown_model_is_not_found)
        case("streaming infer", stream_infer)
        client.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(f"{passed} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
