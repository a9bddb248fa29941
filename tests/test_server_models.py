"""Several models in one server: the registry (flags and YAML), lazy loading, per-model queues, LRU eviction within
a memory budget, hot reload without dropping a request, /v1/models, per-model metrics; and per-key rate limits."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install 'fewstep[serve]'")
pytest.importorskip("onnxscript", reason="building a bundle needs the export extra")
import httpx

from fewstep.commands import serve as serve_command
from fewstep.core.config import ConfigError
from fewstep.core.errors import UserError
from fewstep.runtime import Generator
from fewstep.runtime.model_pool import (
    Batching,
    ModelNotReloadable,
    ModelPool,
    ModelSpec,
    ModelTooLarge,
    ModelUnavailable,
    bundle_footprint,
    default_name,
    parse_model_flag,
    read_models_file,
)
from fewstep.runtime.rate_limit import RateLimit, TokenBuckets
from fewstep.runtime.server import ServeConfig, create_app
from tests.test_server import LiveServer, SlowEngine

BODY = {"prompt": "a red circle", "seed": 1}


@pytest.fixture
def bundle(served_bundle):
    return served_bundle


class CountingLoader:
    """Loads bundles for real, counts the loads, and slows the engines of the models named in `slow`."""

    def __init__(self, slow: dict[str, float] | None = None):
        self.slow, self.loads = slow or {}, []

    def __call__(self, spec: ModelSpec) -> Generator:
        gen = Generator.from_bundle(spec.bundle, engine=spec.engine)
        if spec.name in self.slow:
            gen.denoiser = SlowEngine(gen.denoiser, self.slow[spec.name])
        self.loads.append(spec.name)
        return gen


# --- the registry ----------------------------------------------------------------------------------------------


def test_model_flags_and_files_parse_and_bad_ones_say_what_is_wrong(tmp_path):
    assert parse_model_flag("fast=bundles/prog4") == ModelSpec(name="fast", bundle="bundles/prog4")
    with pytest.raises(ConfigError, match="expected NAME=BUNDLE"):
        parse_model_flag("bundles/prog4")
    with pytest.raises(ConfigError, match="use letters, digits"):
        parse_model_flag("no spaces=bundles/prog4")
    assert default_name("bundles/prog4/") == "prog4" and default_name("/x/my bundle") == "my-bundle"

    good = tmp_path / "models.yaml"
    best = "{bundle: bundles/sd15, engine: openvino-bf16, decoder: tiny, preload: true}"
    good.write_text(f"memory_budget_gb: 4\nmodels:\n  fast: bundles/prog4\n  best: {best}\n")
    parsed = read_models_file(good)
    assert parsed.memory_budget_gb == 4.0 and [m.name for m in parsed.models] == ["fast", "best"]
    assert parsed.models[1] == ModelSpec(name="best", bundle="bundles/sd15", engine="openvino-bf16", decoder="tiny",
                                         preload=True)  # fmt: skip
    cases = {
        "models: []\n": "must map each model name",
        "models: {a: {bundle: b, engin: x}}\n": "unknown field.*engin",
        "models: {a: {bundle: b, decoder: big}}\n": "'big' is not one of",
        "model: {a: b}\n": "unknown field.*model",
        "models: {a: b}\nmemory_budget_gb: -1\n": "positive number of GB",
        "models: {a: 3}\n": "bundle path or a mapping",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_models_file(bad)


def _serve_args(*argv: str) -> argparse.Namespace:
    from fewstep.cli import build_parser

    return build_parser(["serve"]).parse_args(["serve", *argv])


def test_serve_checks_every_model_before_loading_any(bundle, tmp_path):
    args = _serve_args(str(bundle), "--model", f"other={bundle}", "--memory-budget", "2")
    specs, budget = serve_command.model_specs(args)
    assert [s.name for s in specs] == [bundle.name, "other"] and budget == 2.0
    problems = {
        (): "nothing to serve",
        ("--model", f"a={bundle}", "--model", f"a={bundle}"): "given twice",
        ("--model", f"a={tmp_path / 'missing'}"): "is not a directory",
        ("--model", f"a={tmp_path}"): "manifest",  # a directory that is not a bundle
        ("--model", f"a={bundle}", "--engine", "onnx-fp32"): "apply to a BUNDLE given alone",
        (str(bundle), "--engine", "tensorrt-fp16"): "has no engine 'tensorrt-fp16'",
        (str(bundle), "--memory-budget", "0"): "positive number of GB",
    }
    for argv, message in problems.items():
        with pytest.raises((UserError, ConfigError, ValueError), match=message):
            serve_command.model_specs(_serve_args(*argv))
    with pytest.raises(SystemExit):  # argparse names the flag and the NAME=BUNDLE form
        _serve_args("--model", "nobundle")


# --- the pool: lazy loads, per-model queues, eviction, reload ----------------------------------------------------


def test_models_load_at_first_use_and_idle_ones_are_evicted_least_recently_used_first(bundle):
    one = bundle_footprint(ModelSpec(name="a", bundle=str(bundle)))
    assert one > 0
    loader = CountingLoader()
    specs = [ModelSpec(name=n, bundle=str(bundle)) for n in ("a", "b", "c")]

    async def scenario() -> None:
        pool = ModelPool(specs, Batching(max_batch=2), budget_bytes=int(2.5 * one), loader=loader)
        await pool.start()
        assert loader.loads == ["a"] and set(pool.models) == {"a"}  # only the default at start-up
        async with pool.use("b") as b:
            assert (await b.batcher.submit(_job())).shape[0] == 1
        assert loader.loads == ["a", "b"]
        async with pool.use("a"):  # a is now the most recently used ...
            pass
        async with pool.use("c"):  # ... so loading c evicts b, not a
            assert set(pool.models) == {"a", "c"}
        assert pool.used_bytes <= int(2.5 * one)
        async with pool.use("b"):  # b comes back: a was used before c, so a goes
            assert set(pool.models) == {"b", "c"} and loader.loads == ["a", "b", "c", "b"]
        with pytest.raises(KeyError, match="'z' is not served here; models: a, b, c"):
            async with pool.use("z"):
                pass
        await pool.close(timeout=5)

    asyncio.run(scenario())


def test_a_model_in_use_is_never_evicted_and_the_error_says_so(bundle):
    one = bundle_footprint(ModelSpec(name="a", bundle=str(bundle)))
    specs = [ModelSpec(name=n, bundle=str(bundle)) for n in ("a", "b")]

    async def scenario() -> None:
        pool = ModelPool(specs, budget_bytes=int(1.5 * one), loader=CountingLoader())
        await pool.start()
        async with pool.use("a"):
            with pytest.raises(ModelUnavailable, match=r"memory budget .* is held by models in use \(a\)"):
                async with pool.use("b"):
                    pass
        async with pool.use("b"):  # a is idle now: it makes room
            assert set(pool.models) == {"b"}
        small = ModelPool(specs, budget_bytes=one // 2, loader=CountingLoader())
        with pytest.raises(ModelUnavailable, match="more than the whole memory budget"):
            await small.start()
        await pool.close(timeout=5)

    asyncio.run(scenario())


def _job():
    from fewstep.runtime.batcher import Job

    return Job(["a red circle"], [1], None, None)


@pytest.mark.slow
def test_two_models_over_http_with_the_openai_client_and_per_model_metrics(bundle):
    from openai import NotFoundError, OpenAI

    loader = CountingLoader()
    pool = ModelPool([ModelSpec(name="fast", bundle=str(bundle)), ModelSpec(name="other", bundle=str(bundle))],
                     loader=loader)  # fmt: skip
    with LiveServer(create_app(pool, ServeConfig())) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        listed = c.get("/v1/models").json()
        assert [(m["id"], m["loaded"], m["default"]) for m in listed["data"]] == [("fast", True, True),
                                                                               ("other", False, False)]  # fmt: skip
        client = OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        assert len(client.images.generate(prompt="a blue square", model="other", response_format="b64_json").data) == 1
        assert loader.loads == ["fast", "other"]  # loaded at its first request
        assert [m.id for m in client.models.list()] == ["fast", "other"]
        with pytest.raises(NotFoundError, match="'dall-e-3' is not served here; models: fast, other"):
            client.images.generate(prompt="x", model="dall-e-3")
        r = c.post("/v1/generate", json={**BODY, "model": "other", "response_format": "json"})
        assert r.json()["model"] == "other" and c.get("/v1/models/other").json()["loaded"] is True
        assert c.get("/readyz").json()["models_loaded"] == ["fast", "other"]
        page = c.get("/").text  # the web page offers both models
        assert '<option value="fast">fast</option><option value="other">other</option>' in page
        metrics = c.get("/metrics").text
    assert 'fewstep_requests_total{endpoint="/v1/images/generations",key="-",model="other",status="200"}' in metrics
    # an unknown name is labelled "unknown": a client cannot mint metric label values
    assert 'fewstep_rejections_total{key="-",model="unknown",reason="model_not_found"} 1.0' in metrics
    assert "dall-e-3" not in metrics
    assert 'fewstep_model_events_total{event="load",model="other"} 1.0' in metrics
    assert (
        'fewstep_batch_images_count{model="other"} 2.0' in metrics
        and 'fewstep_model_loaded{model="fast"} 1.0' in metrics
    )


@pytest.mark.slow
def test_a_reload_under_load_answers_every_request_and_moves_new_ones_to_the_new_engines(bundle):
    loader = CountingLoader(slow={"m": 0.4})
    pool = ModelPool([ModelSpec(name="m", bundle=str(bundle))], Batching(max_batch=1, max_wait_ms=0), loader=loader)
    with LiveServer(create_app(pool, ServeConfig(max_batch=1, max_wait_ms=0))) as live, ThreadPoolExecutor(4) as ex:
        old = pool.models["m"]
        old_engine = old.gen.denoiser
        in_flight = [ex.submit(httpx.post, live.url + "/v1/generate", json={**BODY, "seed": i}, timeout=60)
                     for i in range(3)]  # fmt: skip
        deadline = time.time() + 30
        while old.users < 3:  # all three are held by the old engines (queued or running)
            assert time.time() < deadline, "the requests did not reach the server"
            time.sleep(0.01)
        assert httpx.post(live.url + "/v1/models/m/reload", timeout=60).status_code == 415  # needs a JSON type
        reloaded = httpx.post(live.url + "/v1/models/m/reload", json={}, timeout=60)
        assert reloaded.status_code == 200 and reloaded.json()["id"] == "m"
        new = pool.models["m"]
        new_engine = new.gen.denoiser
        assert new is not old and loader.loads == ["m", "m"]
        after = httpx.post(live.url + "/v1/generate", json=BODY, timeout=60)
        assert [f.result().status_code for f in in_flight] == [200, 200, 200] and after.status_code == 200
        assert old_engine.calls == 3 * 2  # the three accepted requests ran on the old engines (2 steps each) ...
        assert new_engine.calls == 2  # ... and the one after the reload on the new ones
        deadline = time.time() + 10
        while old in pool._retiring and time.time() < deadline:  # the old engines go once their work is done
            time.sleep(0.05)
        assert old not in pool._retiring and old.gen is None
        missing = httpx.post(live.url + "/v1/models/nope/reload", json={}, timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_pool_of_a_handed_in_generator_cannot_reload(bundle):
    async def scenario() -> None:
        pool = ModelPool.of_loaded("default", Generator.from_bundle(bundle))
        await pool.start()
        with pytest.raises(ModelNotReloadable, match="serve it from its bundle"):
            await pool.reload("default")
        assert "default" in pool.models  # the failed reload kept the old engines
        await pool.close(timeout=5)

    asyncio.run(scenario())


# --- rate limits -------------------------------------------------------------------------------------------------


def test_token_buckets_allow_a_burst_then_the_rate_and_keep_clients_apart():
    now = [0.0]
    buckets = TokenBuckets(RateLimit.of(60, burst=2), clock=lambda: now[0])  # one a second, two at once
    assert [buckets.take("alice") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("alice") == pytest.approx(1.0)  # empty: the next token is due in a second
    assert buckets.take("bob") == 0.0  # another client has its own bucket
    now[0] = 1.0
    assert buckets.take("alice") == 0.0  # the refilled token
    now[0] = 100.0
    assert [buckets.take("alice") for _ in range(3)][:2] == [0.0, 0.0]  # refill is capped at the burst
    assert RateLimit.of(120).burst == 20
    with pytest.raises(ValueError, match="per_minute must be > 0"):
        RateLimit.of(0)


@pytest.mark.slow
def test_a_client_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not(bundle):
    from fewstep.runtime.server_guard import ApiKeys

    keys = ApiKeys.parse("alice:" + "a" * 20 + "\nbob:" + "b" * 20, "test")
    app = create_app(Generator.from_bundle(bundle), ServeConfig(api_keys=keys, rate_limit=RateLimit.of(6, burst=2)))
    alice, bob = ({"Authorization": f"Bearer {k * 20}"} for k in "ab")
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        statuses = [c.post("/v1/generate", json=BODY, headers=alice).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = c.post("/v1/generate", json=BODY, headers=alice)
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 10
        assert limited.json()["error"]["code"] == "rate_limited" and "6 requests per minute" in limited.text
        assert c.post("/v1/generate", json=BODY, headers=bob).status_code == 200  # bob's bucket is his own
        assert (
            c.get("/healthz").status_code == 200 and c.get("/v1/models", headers=alice).status_code == 200
        )  # GETs free
        metrics = c.get("/metrics", headers=bob).text
    assert 'fewstep_rejections_total{key="alice",model="-",reason="rate_limited"} 2.0' in metrics


def test_loads_run_off_the_event_loop_thread(bundle):
    """The loader runs on a worker thread: a load never blocks the requests of the models already loaded."""
    seen = []

    class Recording(CountingLoader):
        def __call__(self, spec):
            seen.append(threading.current_thread() is threading.main_thread())
            return super().__call__(spec)

    async def scenario() -> None:
        pool = ModelPool([ModelSpec(name="a", bundle=str(bundle))], loader=Recording())
        await pool.start()
        await pool.close(timeout=5)

    asyncio.run(scenario())
    assert seen == [False]  # loads never block the event loop's thread


def test_requests_waiting_for_one_load_share_it_and_a_failed_load_is_not_retried_at_once(bundle, tmp_path):
    loader = CountingLoader(slow={})
    broken = tmp_path / "broken"
    broken.mkdir()
    specs = [ModelSpec(name="a", bundle=str(bundle)), ModelSpec(name="b", bundle=str(bundle)),
             ModelSpec(name="bad", bundle=str(broken))]  # fmt: skip

    async def hold(pool: ModelPool, name: str) -> str:
        async with pool.use(name) as model:
            return model.gen.engine_entry.id

    async def scenario() -> None:
        pool = ModelPool(specs, loader=loader)
        await pool.start()
        assert await asyncio.gather(*(hold(pool, "b") for _ in range(5))) == ["onnx-fp32"] * 5
        assert loader.loads == ["a", "b"]  # five requests, one load
        with pytest.raises(ModelUnavailable, match="its bundle cannot be read"):
            await hold(pool, "bad")
        with pytest.raises(ModelUnavailable, match="its bundle cannot be read"):  # remembered, not tried again
            await hold(pool, "bad")
        assert str(broken) not in str(pool._failed["bad"][1])  # clients never see server paths
        too_big = ModelPool([ModelSpec(name="a", bundle=str(bundle))], budget_bytes=1, loader=loader)
        with pytest.raises(ModelTooLarge):
            await too_big.start()
        await pool.close(timeout=5)

    asyncio.run(scenario())


def test_a_request_waiting_for_a_slow_load_times_out_and_the_load_still_finishes(bundle):
    class SlowLoader(CountingLoader):
        def __call__(self, spec):
            if spec.name == "slow":
                time.sleep(1.0)
            return super().__call__(spec)

    loader = SlowLoader()
    specs = [ModelSpec(name="a", bundle=str(bundle)), ModelSpec(name="slow", bundle=str(bundle))]

    async def scenario() -> None:
        pool = ModelPool(specs, loader=loader)
        await pool.start()
        with pytest.raises(TimeoutError):
            async with pool.use("slow", timeout=0.1):
                pass
        async with pool.use("slow", timeout=30) as model:  # the same load, finished
            assert model.name == "slow"
        assert loader.loads == ["a", "slow"]
        await pool.close(timeout=5)

    asyncio.run(scenario())
