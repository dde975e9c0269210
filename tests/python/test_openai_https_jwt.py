"""The official `openai` client over HTTPS with a JWT as its API key, through
`shardgate demo -c` on an edited copy of the demo config.

Everything is real: the certificate authority and the server certificate are
made with `cryptography`, the tokens are minted by PyJWT (RS256) and their key
set is served as a JWKS from a small local HTTP server (the gateway's
`remoteJWKS`), the client is `openai` on its default HTTP client, verifying the server against
the test CA. The demo's listener becomes HTTPS and a SecurityPolicy on its
Gateway asks for JWT authentication and rate limits (qwen-2.5-7b: 3 per minute).

Cases: completion and streaming chat with a valid token; 401 (the client's
`AuthenticationError`) for no JWT, an expired token, a wrong audience and a
token signed by another key; 429 (`RateLimitError`, with the x-ratelimit
headers) after the per-model limit, counted per token subject.
Run by scripts/test with the repository's virtualenv.
"""

import datetime
import http.server
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import jwt
import openai
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SHARDGATE_BIN", os.path.join(ROOT, "target", "debug", "shardgate"))
ISSUER = "https://auth.shardgate.test"
AUDIENCE = "ai-inference"


def pki(workdir):
    """A CA and a server certificate for 127.0.0.1 / localhost, as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shardgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = os.path.join(workdir, "ca.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return ca_path, cert_pem, key_pem


class Jwks(http.server.BaseHTTPRequestHandler):
    """Serves the JWK set at /jwks.json (the identity provider's key endpoint)."""

    body = b"{}"
    fetches = 0

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path != "/jwks.json":
            self.send_error(404)
            return
        Jwks.fetches += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(Jwks.body)))
        self.end_headers()
        self.wfile.write(Jwks.body)

    def log_message(self, *args):
        pass


def indent(text, n):
    return "".join(" " * n + line + "\n" for line in text.strip().splitlines())


def config(cert_pem, key_pem, jwks_addr):
    """The demo config with an HTTPS listener, its Secret and a SecurityPolicy."""
    demo = subprocess.run([BIN, "demo", "--print-config"], check=True, capture_output=True, text=True).stdout
    http_listener = "  - name: http\n    protocol: HTTP\n    port: 8080\n"
    assert http_listener in demo, "the demo config's listener changed; update this test"
    https_listener = (
        "  - name: https\n    protocol: HTTPS\n    port: 8443\n"
        "    tls:\n      mode: Terminate\n      certificateRefs: [{kind: Secret, name: demo-tls}]\n"
    )
    demo = demo.replace(http_listener, https_listener)
    return (
        demo
        + "\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: demo-tls\n  namespace: default\n"
        + "type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n"
        + indent(cert_pem, 4)
        + "  tls.key: |\n"
        + indent(key_pem, 4)
        + "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\n"
        + "metadata:\n  name: demo-security\n  namespace: default\nspec:\n"
        + "  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: demo-gateway}\n"
        + "  authentication:\n    jwt:\n      providers:\n      - name: test-idp\n"
        + f"        issuer: {ISSUER}\n        audiences: [{AUDIENCE}]\n"
        + f"        remoteJWKS: {{uri: 'http://{jwks_addr}/jwks.json', cacheDuration: 1h}}\n"
        + "  rateLimit:\n    default: {requests: 1000, unit: minute}\n"
        + "    perModel:\n      qwen-2.5-7b: {requests: 3, unit: minute}\n"
    )


def start_demo(config_path):
    ready = os.path.join(tempfile.mkdtemp(prefix="shardgate-py-"), "ready.json")
    proc = subprocess.Popen(
        [BIN, "demo", "-c", config_path, "--port", "0", "--bind", "127.0.0.1", "--admin-addr", "off",
         "--shards", "1", "--ready-file", ready],
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
    workdir = tempfile.mkdtemp(prefix="shardgate-https-")
    ca_path, cert_pem, key_pem = pki(workdir)
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key()))
    jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    Jwks.body = json.dumps({"keys": [jwk]}).encode()
    jwks_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=jwks_server.serve_forever, daemon=True).start()
    jwks_addr = f"127.0.0.1:{jwks_server.server_address[1]}"

    def token(sub="alice", key=signing, aud=AUDIENCE, exp_in=600, kid="k1"):
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": aud, "sub": sub, "iat": now, "exp": now + exp_in}
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    config_path = os.path.join(workdir, "demo-https.yaml")
    with open(config_path, "w") as f:
        f.write(config(cert_pem, key_pem, jwks_addr))
    proc, addr = start_demo(config_path)
    # The client verifies the gateway's certificate against the test CA.
    http_client = openai.DefaultHttpx2Client(verify=ssl.create_default_context(cafile=ca_path), timeout=30)
    failures = 0
    passed = 0

    def client(api_key):
        return openai.OpenAI(base_url=f"https://{addr}/v1", api_key=api_key, max_retries=0,
                             http_client=http_client)

    try:
        # The control thread fetches the JWKS at start: wait (bounded) until a
        # valid token is accepted.
        deadline = time.monotonic() + 20
        while True:
            try:
                client(token()).models.list()
                break
            except openai.AuthenticationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling interval of a deadline-bounded poll

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
            r = client(token()).completions.create(model="llama-3-8b", prompt="the quick brown fox", max_tokens=5)
            assert r.model == "llama-3-8b", r.model
            assert r.usage.completion_tokens == 5, r.usage

        def chat_stream():
            stream = client(token()).chat.completions.create(
                model="llama-3-8b",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=8,
                stream=True,
            )
            pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
            assert len(pieces) == 8, pieces

        def refused(api_key, why):
            try:
                client(api_key).chat.completions.create(
                    model="llama-3-8b", messages=[{"role": "user", "content": "x"}], max_tokens=1
                )
            except openai.AuthenticationError as e:
                assert e.status_code == 401, e.status_code
                assert e.response.headers.get("www-authenticate", "").startswith("Bearer"), e.response.headers
                assert e.type == "authentication_error", e.type
                return
            raise AssertionError(f"{why}: no AuthenticationError")

        def rate_limited():
            c = client(token(sub="rate-limit-subject"))
            for i in range(3):
                r = c.chat.completions.with_raw_response.create(
                    model="qwen-2.5-7b", messages=[{"role": "user", "content": "x"}], max_tokens=1
                )
                assert r.http_response.status_code == 200, (i, r.http_response.status_code)
            try:
                c.chat.completions.create(model="qwen-2.5-7b", messages=[{"role": "user", "content": "x"}], max_tokens=1)
            except openai.RateLimitError as e:
                h = e.response.headers
                assert e.status_code == 429
                assert int(h["retry-after"]) >= 1, h
                assert h["x-ratelimit-limit-requests"] == "3", h
                assert h["x-ratelimit-remaining-requests"] == "0", h
            else:
                raise AssertionError("the 4th request within the minute was not refused")
            # Another subject has its own budget.
            r = client(token(sub="someone-else")).chat.completions.create(
                model="qwen-2.5-7b", messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
            assert r.model == "qwen-2.5-7b", r.model

        case("completion over HTTPS with a JWT", completion)
        case("chat completion, streaming, over HTTPS with a JWT", chat_stream)
        case("not a JWT -> AuthenticationError", lambda: refused("not-a-jwt", "garbage token"))
        case("expired token -> AuthenticationError", lambda: refused(token(exp_in=-3600), "expired"))
        case("wrong audience -> AuthenticationError", lambda: refused(token(aud="someone-else"), "audience"))
        case("signed by another key -> AuthenticationError", lambda: refused(token(key=other), "signature"))
        case("per-model rate limit per subject -> RateLimitError", rate_limited)
    finally:
        http_client.close()
        jwks_server.shutdown()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"openai-https-jwt: {passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
