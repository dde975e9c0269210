"""The official `openai` Python client against `shardgate demo`.

Starts the demo (gateway + simulated vLLM servers) on an ephemeral gateway port,
then uses the client exactly as an application would: completion, streaming chat
completion, embeddings, and the typed error on an unknown model; then the same client
over HTTP/2 (httpx with `http2=True` and HTTP/1.1 off: prior knowledge on the plain
HTTP listener), checking each answer came over HTTP/2.
Run by scripts/test with the repository's virtualenv.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SHARDGATE_BIN", os.path.join(ROOT, "target", "debug", "shardgate"))


def start_demo():
    ready = os.path.join(tempfile.mkdtemp(prefix="shardgate-py-"), "ready.json")
    proc = subprocess.Popen(
        [BIN, "demo", "--port", "0", "--bind", "127.0.0.1", "--admin-addr", "off", "--shards", "1", "--ready-file", ready],
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, RUST_LOG="warn"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"shardgate demo exited with {proc.returncode}")
        try:
            with open(ready) as f:
                info = json.load(f)
            return proc, info["listen"][0]
        except (OSError, ValueError):
            time.sleep(0.02)  # polling interval of a deadline-bounded poll
    proc.kill()
    raise RuntimeError("shardgate demo did not become ready in 30 s")


def main():
    proc, addr = start_demo()
    failures = 0
    passed = 0
    try:
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0, timeout=30)

        def case(name, fn):
            nonlocal failures, passed
            try:
                fn()
                passed += 1
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001 - report every failure
                failures += 1
                print(f"FAIL {name}: {e!r}")

        def completion():
            r = client.completions.create(model="llama-3-8b", prompt="the quick brown fox", max_tokens=5)
            assert r.model == "llama-3-8b", r.model
            assert r.choices[0].text.strip(), r
            assert r.usage.completion_tokens == 5, r.usage

        def chat_stream():
            stream = client.chat.completions.create(
                model="qwen-2.5-7b",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=8,
                stream=True,
            )
            pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
            assert len(pieces) == 8, pieces

        def embeddings():
            r = client.embeddings.create(model="llama-3-8b", input=["alpha", "beta gamma"])
            assert [d.index for d in r.data] == [0, 1], r
            assert len(r.data[0].embedding) > 0

        def models():
            ids = sorted(m.id for m in client.models.list())
            assert ids == ["llama-3-8b", "qwen-2.5-7b"], ids

        def unknown_model():
            try:
                client.chat.completions.create(model="gpt-9000", messages=[{"role": "user", "content": "x"}])
            except openai.NotFoundError as e:
                assert e.status_code == 404
                assert e.code == "model_not_found", e.code
                return
            raise AssertionError("no NotFoundError for an unknown model")

        case("completion", completion)
        case("chat completion, streaming", chat_stream)
        case("embeddings", embeddings)
        case("models list", models)
        case("unknown model -> NotFoundError", unknown_model)

        # The same client over HTTP/2 (h2c with prior knowledge).
        h2 = openai.OpenAI(
            base_url=f"http://{addr}/v1",
            api_key="unused",
            max_retries=0,
            timeout=30,
            http_client=httpx.Client(http1=False, http2=True, timeout=30),
        )

        def h2_completion():
            raw = h2.completions.with_raw_response.create(model="llama-3-8b", prompt="the quick brown fox", max_tokens=5)
            assert raw.http_response.http_version == "HTTP/2", raw.http_response.http_version
            r = raw.parse()
            assert r.model == "llama-3-8b", r.model
            assert r.usage.completion_tokens == 5, r.usage

        def h2_chat_stream():
            with h2.chat.completions.with_streaming_response.create(
                model="qwen-2.5-7b",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=8,
                stream=True,
            ) as resp:
                assert resp.http_response.http_version == "HTTP/2", resp.http_response.http_version
                pieces = [c.choices[0].delta.content for c in resp.parse() if c.choices and c.choices[0].delta.content]
            assert len(pieces) == 8, pieces

        def h2_unknown_model():
            try:
                h2.chat.completions.create(model="gpt-9000", messages=[{"role": "user", "content": "x"}])
            except openai.NotFoundError as e:
                assert e.status_code == 404
                assert e.code == "model_not_found", e.code
                assert e.response.http_version == "HTTP/2", e.response.http_version
                return
            raise AssertionError("no NotFoundError for an unknown model over HTTP/2")

        case("HTTP/2: completion", h2_completion)
        case("HTTP/2: chat completion, streaming", h2_chat_stream)
        case("HTTP/2: unknown model -> NotFoundError", h2_unknown_model)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"openai-client: {passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
