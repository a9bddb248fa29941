"""Several models in one server: a table of named bundles, loaded when first asked for, each with its own queue and
micro-batcher, evicted least-recently-used when a memory budget is set, and reloaded in place without dropping a
request.

A request holds a model with `async with pool.use(name) as model:`; while any request holds it, or its batcher has
work, a model is never evicted. A reload loads the new engines beside the old ones (the budget must fit both),
sends new requests to them, and retires the old batcher once the requests it accepted are answered. Loads run one
at a time on a worker thread, so the event loop keeps serving the models already loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fewstep.core.config import Config, ConfigError, from_dict, param, read_yaml_mapping
from fewstep.core.manifest import read_manifest
from fewstep.core.resources import gib, resident_memory, return_freed_memory
from fewstep.runtime.batcher import BatchReport, MicroBatcher
from fewstep.runtime.generator import Generator

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RETRY_FAILED_LOAD_S = 10.0
log = logging.getLogger("fewstep.serve")


@dataclass(frozen=True)
class ModelSpec(Config):
    """One served model: the name clients send as `model`, and the bundle behind it."""

    name: str = param("", "the name clients send as `model` (letters, digits, . _ -; at most 64)")
    bundle: str = param("", "the engine bundle directory (fewstep export)", path="dir")
    engine: str | None = param(None, "engine id from the manifest (default: the first that loads here, in backend "
                               "priority order)")  # fmt: skip
    decoder: Literal["vae", "tiny"] | None = param(None, "latent bundles: the image decoder (default: the bundle's)")
    preload: bool = param(False, "load at start-up instead of at the first request (the first model always is)")

    def check(self) -> None:
        if not MODEL_NAME.fullmatch(self.name):
            raise ConfigError(f"model name {self.name!r}: use letters, digits, . _ - (at most 64)", "name")
        if not self.bundle:
            raise ConfigError(f"model {self.name!r} needs a bundle directory", "bundle")


@dataclass(frozen=True)
class ModelsFile:
    """What `fewstep serve --models FILE` reads."""

    models: tuple[ModelSpec, ...]
    memory_budget_gb: float | None = None


def parse_model_flag(text: str) -> ModelSpec:
    """`NAME=BUNDLE` (the --model flag)."""
    name, sep, bundle = text.partition("=")
    if not sep or not name or not bundle:
        raise ConfigError(f"--model {text!r}: expected NAME=BUNDLE, e.g. --model prog4=bundles/prog4")
    return ModelSpec(name=name.strip(), bundle=bundle.strip())


def read_models_file(path: str | Path) -> ModelsFile:
    """A models YAML: `memory_budget_gb` (optional) and `models`, a mapping of name -> {bundle, engine, decoder,
    preload} (a bare string is the bundle). The first model is the default one."""
    data = read_yaml_mapping(path, "models file")
    unknown = sorted(set(data) - {"models", "memory_budget_gb"})
    if unknown:
        raise ConfigError(f"models file {path}: unknown field(s) {', '.join(unknown)}; it takes models and "
                          "memory_budget_gb")  # fmt: skip
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"models file {path}: `models` must map each model name to its bundle")
    specs = []
    for name, entry in models.items():
        entry = {"bundle": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            raise ConfigError(f"models file {path}: model {name!r} must be a bundle path or a mapping")
        specs.append(from_dict(ModelSpec, {"name": str(name), **entry}, source=f"models file {path}, model {name!r}"))
    budget = data.get("memory_budget_gb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"models file {path}: memory_budget_gb must be a positive number of GB; got {budget!r}")
    return ModelsFile(tuple(specs), float(budget) if budget is not None else None)


class ModelNotFound(KeyError):
    """A request named a model this server does not serve (404)."""


class ModelUnavailable(RuntimeError):
    """A model cannot be loaded now: the budget is held by busy models, or its bundle failed to load (503)."""


class ModelLoadFailed(ModelUnavailable):
    """Its bundle could not be read or loaded (remembered for RETRY_FAILED_LOAD_S: each try holds the load lock)."""


class ModelTooLarge(ModelUnavailable):
    """A model larger than the whole memory budget: retrying cannot help (503 without Retry-After)."""


class ModelNotReloadable(ModelUnavailable):
    """A model handed to the server already loaded has no bundle to read again (409)."""


def bundle_footprint(spec: ModelSpec) -> int:
    """Bytes a model will hold, estimated from its bundle before loading: every file of the bundle except the
    engines it will not run (all engines but the largest one, or but the named one)."""
    root = Path(spec.bundle)
    manifest = read_manifest(root)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())

    def size(files: Iterable[str]) -> int:
        return sum((root / f).stat().st_size for f in files if (root / f).is_file())

    engines = {e.id: size(e.files) for e in manifest.engines}
    if not engines:
        return total
    chosen = engines[spec.engine] if spec.engine in engines else max(engines.values())
    return total - sum(engines.values()) + chosen


@dataclass(eq=False)  # compared (and kept in sets) by identity
class LoadedModel:
    spec: ModelSpec
    gen: Generator
    batcher: MicroBatcher
    footprint: int  # bytes counted against the budget: the bundle files it loads (bundle_footprint)
    load_seconds: float
    resident_growth: int = 0  # how much the process grew while it loaded (other models' work blurs it)
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0  # requests holding it now

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def busy(self) -> bool:
        return self.users > 0 or not self.batcher.idle


Loader = Callable[[ModelSpec], Generator]


@dataclass(frozen=True)
class Batching:
    """Each model's micro-batcher: images per engine call, the batching window, waiting requests before 429."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64


def load_from_bundle(spec: ModelSpec, threads: int | None = None) -> Generator:
    return Generator.from_bundle(spec.bundle, engine=spec.engine, decoder=spec.decoder, threads=threads)


class ModelPool:
    """Named models, loaded lazily, each with its own MicroBatcher (per-model queue and batching)."""

    def __init__(self, specs: Iterable[ModelSpec], batching: Batching = Batching(), budget_bytes: int | None = None,
                 loader: Loader = load_from_bundle, preloaded: dict[str, Generator] | None = None):  # fmt: skip
        """`preloaded`: models handed in already loaded (they cannot be reloaded: the pool has no bundle for
        them unless their spec names one)."""
        self.specs: dict[str, ModelSpec] = {}
        for s in specs:
            if s.name in self.specs:
                raise ConfigError(f"the model name {s.name!r} appears twice")
            self.specs[s.name] = s
        if not self.specs:
            raise ConfigError("serve at least one model")
        self.default = next(iter(self.specs))
        self.batching, self.budget, self.loader = batching, budget_bytes, loader
        self._preloaded = dict(preloaded or {})
        # set by the server before start(): metrics per engine call, and per load / reload / evict
        self.on_batch: Callable[[str, BatchReport], None] = lambda _model, _report: None
        self.on_event: Callable[[str, str], None] = lambda _model, _event: None
        self.models: dict[str, LoadedModel] = {}
        self._retiring: set[LoadedModel] = set()
        self._lock = asyncio.Lock()  # one load at a time: the budget check and the load are one step
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self._failed: dict[str, tuple[float, ModelLoadFailed]] = {}

    @classmethod
    def of_loaded(cls, name: str, gen: Generator, batching: Batching = Batching()) -> ModelPool:
        """A pool of one model that is already loaded (no bundle path: it cannot be reloaded)."""
        return cls([ModelSpec(name=name, bundle="(loaded)")], batching, preloaded={name: gen})

    @property
    def used_bytes(self) -> int:
        return sum(m.footprint for m in self.models.values()) + sum(m.footprint for m in self._retiring)

    async def start(self) -> None:
        """Load the default model and every `preload` one (before the server says it is ready)."""
        loop = asyncio.get_running_loop()
        for name, gen in self._preloaded.items():
            await loop.run_in_executor(None, gen.prepare, self.batching.max_batch)
            spec = self.specs[name]
            footprint = 0 if spec.bundle == "(loaded)" else await loop.run_in_executor(None, self._estimate, spec)
            self._install(spec, gen, footprint, seconds=0.0)
        self._preloaded = {}
        for spec in self.specs.values():
            if (spec.name == self.default or spec.preload) and spec.name not in self.models:
                async with self._lock:
                    await self._load(spec)

    def resolve(self, name: str | None) -> str:
        if name is None:
            return self.default
        if name not in self.specs:
            raise ModelNotFound(f"model {name!r} is not served here; models: {', '.join(self.specs)}")
        return name

    @asynccontextmanager
    async def use(self, name: str | None, timeout: float | None = None) -> AsyncIterator[LoadedModel]:
        """Hold model `name` (None: the default) for one request, loading it first if needed; TimeoutError when
        it is not loaded within `timeout` seconds (the load goes on for the requests after)."""
        name = self.resolve(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while (model := self.models.get(name)) is None:  # again after a wait: it may have been evicted meanwhile
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(asyncio.shield(self._loading_task(name)), left)
        model.users += 1  # no await since the lookup: nothing can evict it in between
        model.last_used = time.monotonic()
        try:
            yield model
        finally:
            model.users -= 1

    def _loading_task(self, name: str) -> asyncio.Future[LoadedModel]:
        """One load per model however many requests wait for it; a load that failed is not retried for
        RETRY_FAILED_LOAD_S (each attempt would hold the load lock), its error given to every request meanwhile."""
        failed = self._failed.get(name)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise failed[1]
        task = self._loading.get(name)
        if task is None:

            async def load() -> LoadedModel:
                async with self._lock:
                    return self.models.get(name) or await self._load(self.specs[name])

            task = asyncio.ensure_future(load())
            self._loading[name] = task

            def done(t: asyncio.Future[LoadedModel]) -> None:
                self._loading.pop(name, None)
                if not t.cancelled() and isinstance(t.exception(), ModelLoadFailed):
                    self._failed[name] = (time.monotonic(), t.exception())  # type: ignore[assignment]
                elif not t.cancelled() and t.exception() is None:
                    self._failed.pop(name, None)

            task.add_done_callback(done)
        return task

    async def reload(self, name: str) -> LoadedModel:
        """Load model `name` again from its bundle (a re-exported engine, a new decoder) and switch new requests
        to it; requests already accepted finish on the old engines, which are then freed."""
        name = self.resolve(name)
        if self.specs[name].bundle == "(loaded)":
            raise ModelNotReloadable(f"model {name!r} was handed to the server loaded; serve it from its bundle "
                                   "(fewstep serve BUNDLE) to reload it")  # fmt: skip
        async with self._lock:
            old = self.models.get(name)
            new = await self._load(self.specs[name], reloading=old)
        if old is not None:
            self._retire(old)
        self.on_event(name, "reload")
        return new

    async def reload_all(self) -> list[str]:
        """Reload every loaded model (SIGHUP); a model that fails keeps its old engines."""
        failed = []
        for name in list(self.models):
            if name not in self.models:  # evicted by an earlier reload of this round: leave it unloaded
                continue
            try:
                await self.reload(name)
            except (ModelUnavailable, OSError, ValueError) as e:
                failed.append(f"{name}: {e}")
        return failed

    async def _load(self, spec: ModelSpec, reloading: LoadedModel | None = None) -> LoadedModel:
        need = await asyncio.get_running_loop().run_in_executor(None, self._estimate, spec)
        await self._make_room(need, spec.name)
        before, t0 = resident_memory(), time.perf_counter()
        try:
            gen = await asyncio.get_running_loop().run_in_executor(None, self._load_and_prepare, spec)
        except ModelUnavailable:
            raise
        except Exception as e:  # a damaged or missing bundle fails this model's requests, not the server
            log.error("model %s could not be loaded from %s: %s", spec.name, spec.bundle, e)
            raise ModelLoadFailed(f"model {spec.name!r} could not be loaded (the server log says why); "
                                   f"retried after {RETRY_FAILED_LOAD_S:g} s") from e  # fmt: skip
        model = self._install(spec, gen, need, time.perf_counter() - t0)
        model.resident_growth = max(0, resident_memory() - before)
        if reloading is None:
            self.on_event(spec.name, "load")
        return model

    def _estimate(self, spec: ModelSpec) -> int:
        try:
            return bundle_footprint(spec)
        except (OSError, ValueError) as e:
            log.error("model %s: cannot read its bundle %s: %s", spec.name, spec.bundle, e)
            raise ModelLoadFailed(f"model {spec.name!r}: its bundle cannot be read (the server log says why)") from e

    def _load_and_prepare(self, spec: ModelSpec) -> Generator:
        gen = self.loader(spec)
        gen.prepare(self.batching.max_batch)  # e.g. OpenVINO's static batch sizes, before the first request
        return gen

    def _install(self, spec: ModelSpec, gen: Generator, footprint: int, seconds: float) -> LoadedModel:
        b = self.batching
        batcher = MicroBatcher(gen, b.max_batch, b.max_wait_ms, b.max_queue,
                               on_batch=lambda report: self.on_batch(spec.name, report))  # fmt: skip
        batcher.start()
        model = LoadedModel(spec, gen, batcher, footprint, seconds)
        self.models[spec.name] = model
        return model

    async def _make_room(self, need: int, loading: str) -> None:
        """Evict idle models, least recently used first, until `need` more bytes fit the budget."""
        if self.budget is None:
            return
        if need > self.budget:
            raise ModelTooLarge(f"model {loading!r} needs about {gib(need)}, more than the whole memory "
                                   f"budget of {gib(self.budget)}; raise --memory-budget")  # fmt: skip
        while self.used_bytes + need > self.budget:
            idle = sorted((m for m in self.models.values() if not m.busy and m.name != loading),
                          key=lambda m: m.last_used)  # fmt: skip
            if not idle:
                held = ", ".join(m.name for m in [*self.models.values(), *self._retiring]) or "nothing"
                raise ModelUnavailable(f"model {loading!r} needs about {gib(need)} and the memory budget of "
                                       f"{gib(self.budget)} is held by models in use ({held}); "
                                       "retry shortly")  # fmt: skip
            await self._evict(idle[0])

    async def _evict(self, model: LoadedModel) -> None:
        del self.models[model.name]
        await self._free(model)
        self.on_event(model.name, "evict")

    @staticmethod
    async def _free(model: LoadedModel) -> None:
        """Stop its batcher and drop every reference to its engines, then give the memory back."""
        await model.batcher.drain(timeout=0)  # idle: returns once the stopped worker has ended
        model.batcher.gen = model.gen = None  # type: ignore[assignment]
        return_freed_memory()

    def _retire(self, old: LoadedModel) -> None:
        self._retiring.add(old)

        async def when_done() -> None:
            while old.busy:
                await asyncio.sleep(0.05)
            self._retiring.discard(old)
            await self._free(old)

        task = asyncio.get_running_loop().create_task(when_done())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def depth(self) -> int:
        return sum(m.batcher.depth for m in [*self.models.values(), *self._retiring])

    async def close(self, timeout: float) -> None:
        """Graceful shutdown: wait (up to `timeout` s) for every accepted job, then stop the batchers."""
        deadline = time.perf_counter() + timeout
        for m in [*self.models.values(), *self._retiring]:
            await m.batcher.drain(timeout=max(0.0, deadline - time.perf_counter()))
        for task in list(self._tasks):
            task.cancel()

    def describe(self) -> list[dict[str, Any]]:
        """The models, in the OpenAI API's `/v1/models` shape plus what fewstep knows of each."""
        out = []
        for name in self.specs:
            m = self.models.get(name)
            row: dict[str, Any] = {"id": name, "object": "model", "owned_by": "fewstep", "loaded": m is not None,
                                   "default": name == self.default}  # fmt: skip
            if m is not None:
                row.update(created=int(m.loaded_at), engine=m.gen.engine_entry.id,
                           bundle_model=m.gen.manifest.model.name, size=f"{m.gen.shape[2]}x{m.gen.shape[1]}",
                           memory_bytes=m.footprint, resident_growth_bytes=m.resident_growth,
                           load_seconds=round(m.load_seconds, 3), queue_depth=m.batcher.depth)  # fmt: skip
            out.append(row)
        return out


def budget_from_gb(gb: float | None) -> int | None:
    return None if gb is None else int(gb * 1e9)


def default_name(bundle: str | Path) -> str:
    """A bundle served alone is named after its directory (`bundles/prog4` -> `prog4`)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", os.path.basename(os.path.normpath(str(bundle))))[:64].lstrip("._-")
    return name or "default"
