"""`fewstep serve` as something to put on a network, over real HTTP(S) on loopback: API keys (401 with
WWW-Authenticate, the official openai client with a key, over TLS too), hostile JSON that gets 4xx in the OpenAI
error format and never a 5xx, CORS only for allowed origins, request ids, per-key metrics and the JSON access log."""

from __future__ import annotations

import json
import logging
import ssl
import time

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install 'fewstep[serve]'")
pytest.importorskip("onnxscript", reason="building a bundle needs the export extra")
import httpx

from fewstep.runtime import Generator
from fewstep.runtime.server import ServeConfig, create_app
from fewstep.runtime.server_guard import ApiKeys
from tests.test_server import LiveServer as Live

ALICE, BOB = "alice-" + "a" * 26, "bob-" + "b" * 28
KEYS = ApiKeys.parse(f"alice:{ALICE}\nbob:{BOB}", "test keys")


@pytest.fixture(scope="module")
def gen(served_bundle):
    return Generator.from_bundle(served_bundle)


def _is_openai_error(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]["message"]


@pytest.mark.slow
def test_keys_on_401_without_a_key_and_the_openai_client_works_with_one(gen, caplog):
    from openai import AuthenticationError, OpenAI

    with Live(create_app(gen, ServeConfig(api_keys=KEYS))) as live, httpx.Client(base_url=live.url) as c:
        for headers in ({}, {"Authorization": "Bearer wrong-key-of-some-length"}, {"Authorization": ALICE}):
            r = c.post("/v1/generate", json={"prompt": "a red circle"}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="fewstep"'
            assert "API key" in _is_openai_error(r)
        assert c.get("/metrics").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
        page = c.get("/").text
        assert "const needsKey = true" in page  # the web page asks for the key

        with caplog.at_level(logging.INFO, logger="fewstep.access"):
            r = c.post("/v1/generate", json={"prompt": "a red circle", "seed": 3},
                       headers={"Authorization": f"Bearer {ALICE}", "X-Request-ID": "req-42"})  # fmt: skip
            # the server thread writes the line after the response has gone out: wait for it inside the block
            # (earlier requests' lines may be captured too when another test left the logger at INFO)
            deadline, lines = time.time() + 10, []
            while not lines and time.time() < deadline:
                time.sleep(0.01)
                access = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "fewstep.access"]
                lines = [line for line in access if line.get("request_id") == "req-42"]
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-request-id"] == "req-42"
        want = {"request_id": "req-42", "path": "/v1/generate", "status": 200, "key": "alice"}
        assert len(lines) == 1 and want.items() <= lines[0].items()
        generated = c.get("/healthz").headers["x-request-id"]
        assert len(generated) == 32 and c.get("/healthz").headers["x-request-id"] != generated  # a new id each
        assert c.get("/healthz", headers={"X-Request-ID": "bad id\twith tabs"}).headers["x-request-id"] != "bad id"

        client = OpenAI(base_url=live.url + "/v1", api_key=BOB, max_retries=0)
        assert len(client.images.generate(prompt="a blue square", n=2, response_format="b64_json").data) == 2
        with pytest.raises(AuthenticationError, match="Incorrect API key"):
            OpenAI(base_url=live.url + "/v1", api_key="not-a-key", max_retries=0).images.generate(prompt="x")
        metrics = c.get("/metrics", headers={"Authorization": f"Bearer {BOB}"}).text
        assert 'endpoint="/v1/images/generations",key="bob",model="default",status="200"' in metrics
        assert 'endpoint="/v1/generate",key="-",model="-",status="401"' in metrics
        assert 'fewstep_rejections_total{key="-",model="-",reason="unauthorized"}' in metrics


@pytest.mark.slow
def test_tls_with_keys_serves_the_openai_client(gen, tmp_path):
    trustme = pytest.importorskip("trustme", reason="the TLS test makes its certificate with trustme (dev extra)")
    from openai import OpenAI

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    app = create_app(gen, ServeConfig(api_keys=KEYS))
    with Live(app, ssl_certfile=str(cert_pem), ssl_keyfile=str(key_pem)) as live:
        assert live.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(ca_pem))
        with OpenAI(
            base_url=live.url + "/v1", api_key=ALICE, max_retries=0, http_client=httpx.Client(verify=trusted)
        ) as client:  # closed: shutdown waits for no keep-alive
            assert len(client.images.generate(prompt="a red circle", response_format="b64_json").data) == 1
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate stops
            httpx.get(live.url + "/healthz", timeout=5)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadTimeout)):  # plain HTTP to the TLS port: no answer
            httpx.get(live.url.replace("https://", "http://") + "/healthz", timeout=2)


HOSTILE = [
    (b'{"prompt": "x", "guidance": NaN}', 400),
    (b'{"prompt": "x", "guidance": Infinity}', 400),
    (b'{"prompt": "x", "guidance": -Infinity}', 400),
    (b'{"prompt": "x", "guidance": 1e400}', 400),
    (b'{"prompt": "x", "seed": ' + b"9" * 4500 + b"}", 400),  # past Python's 4,300-digit int limit
    (b'{"prompt": "x", "seed": 99999999999999999999}', 422),
    (b"[" * 20_000 + b"]" * 20_000, 400),
    (b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400),
    (b'{"prompt": "x", "stpes": 2}', 422),  # a misspelt field is not silently ignored
    (b'{"prompt": "x", "n": "2"}', 422),
    (b'{"prompt": "x", "seed": true}', 422),
    (b'{"prompt": "x", "steps": 2.5}', 422),
    (b'{"prompt": ["x"]}', 422),
    (b'"just a string"', 422),
    (b"null", 422),
    (b"{}", 422),
    (b'{"prompt": "x"' , 400),
    (b"\xff\xfe", 400),
]  # fmt: skip


@pytest.mark.slow
def test_hostile_json_gets_a_4xx_in_the_openai_error_format_never_a_5xx(gen):
    with Live(create_app(gen, ServeConfig())) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        for body, status in HOSTILE:
            for path in ("/v1/generate", "/v1/images/generations"):
                r = c.post(path, content=body, headers={"content-type": "application/json"})
                assert r.status_code == status, (path, body[:60], r.text[:200])
                message = _is_openai_error(r)
                assert "Traceback" not in message and len(message) < 1000
        nan = c.post("/v1/generate", content=HOSTILE[0][0], headers={"content-type": "application/json"})
        assert "NaN" in _is_openai_error(nan)
        typo = c.post("/v1/generate", json={"prompt": "x", "stpes": 2}).json()["error"]
        assert typo["param"] == "stpes" and "Extra inputs are not permitted" in typo["message"]
        assert c.post("/v1/generate", json={"prompt": "x", "guidance": 3}).status_code == 200  # an int for a float
        assert c.get("/readyz").status_code == 200  # still serving after all of it


@pytest.mark.slow
def test_cors_answers_only_the_allowed_origin(gen):
    allowed, other = "https://app.example.com", "https://evil.example.com"
    app = create_app(gen, ServeConfig(api_keys=KEYS, cors_origins=(allowed,)))
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    with Live(app) as live, httpx.Client(base_url=live.url) as c:
        ok = c.options("/v1/generate", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        bad = c.options("/v1/generate", headers={"Origin": other, **preflight})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        r = c.post("/v1/generate", json={"prompt": "x"},
                   headers={"Origin": allowed, "Authorization": f"Bearer {ALICE}"})  # fmt: skip
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == allowed
    with Live(create_app(gen, ServeConfig())) as live, httpx.Client(base_url=live.url) as c:  # default: no CORS
        r = c.post("/v1/generate", json={"prompt": "x"}, headers={"Origin": allowed})
        assert "access-control-allow-origin" not in r.headers
