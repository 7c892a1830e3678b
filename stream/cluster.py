"""Twins across render nodes on Ray: one render node (a Ray actor owning a twincast server) per GPU, and a front
door that places live twins on them, refuses when they are full, proxies WHEP, and recovers from a dead node.

The only module of ``stream`` that imports Ray (it is the ``cluster`` extra).

A *twin source* (``--twin NAME=PACK,MODEL``) is what every node loads at start; a *live twin* is one session of
a source, named on its own (``POST /api/cluster/twins {"name": "shop-1", "twin": "anna"}``), living on one node.

Capacity: at start a node times its engine on batches of 1, 2, 4, … ``max_batch`` frames
(``engines.bench.time_engine``) and takes as its capacity the most sessions whose frames, rendered in full
batches of ``max_batch`` plus one remainder batch, take at most ``HEADROOM`` (half) of a frame period at
``FPS`` (25 fps): the rest of the period is for compositing, the viewers' encoders and jitter
(``capacity_from_timings``). A configured capacity (``--capacity``) replaces the measured one; both are shown.

Placement: a new live twin goes to the live node with the most free capacity (capacity − twins it holds), or is
refused (``ClusterFullError``: 503, with every node's capacity) when none has room.

Failure: the front door pings every node each ``PING_EVERY_S``; a ping that raises ``RayActorError`` (the actor
or its process died) or ``MISSED_PINGS`` pings in a row that time out mark the node dead (the actor is killed,
so a stalled one cannot come back). Its twins wait for room; they are placed again on nodes with room at once,
and a replacement node is started when Ray can place one (``REPLACE_TIMEOUT_S``); waiting twins go there when it
is up. A viewer's WHEP resource died with the node: the player re-POSTs to the front door and lands on the twin's
new node (a WHEP POST for a waiting twin is a 503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import numpy as np
import ray
from aiohttp import web
from multidict import CIMultiDict
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from engines.base import Engine
from engines.bench import time_engine
from stream.app import errors_as_json
from stream.config import ServeConfig
from stream.peers import MAX_SDP_BYTES
from stream.runtime import SESSION_ID, TwinRuntime
from stream.server import TwinSource, build_runtime, close_sockets_on_shutdown
from twincast.errors import InputError, LimitError, NotFoundError, TwincastError, UnauthorizedError

log = logging.getLogger(__name__)

FPS = 25.0
HEADROOM = 0.5  # the share of a frame period a node's renders may take
MAX_NODE_SESSIONS = 256  # ServeConfig's own bound on max_sessions
MEASURE_S = 0.5  # timed seconds per batch size when a node measures its engine
PING_EVERY_S = 1.0
PING_TIMEOUT_S = 5.0
MISSED_PINGS = 3  # pings in a row that time out before a node counts as dead
REPLACE_TIMEOUT_S = 180.0  # how long a replacement node may take to be placed by Ray and start
NODE_CALL_TIMEOUT_S = 30.0  # placing or removing a twin on a node
WAITING_RETRY_S = 2.0  # what a viewer of a twin waiting for room is told to wait


class ClusterFullError(LimitError):
    """No live render node has room for another twin (503); ``capacities`` lists every node's figures."""

    def __init__(self, message: str, capacities: list[dict[str, Any]]) -> None:
        super().__init__(message, limit="node_capacity", value=sum(c["capacity"] for c in capacities),
                         http_status=503, retry_after_s=30.0)
        self.capacities = capacities


# --- capacity ---------------------------------------------------------------------------------------------------

def batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes a node times: 1, 2, 4, … up to ``max_batch`` (which is always included)."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_batch})


def capacity_from_timings(seconds_per_call: dict[int, float], max_batch: int, *, fps: float = FPS,
                          headroom: float = HEADROOM, limit: int = MAX_NODE_SESSIONS) -> int:
    """How many sessions fit: the largest n whose frames of one tick — ``n // max_batch`` calls of ``max_batch``
    and one of the remainder, each call's time interpolated linearly between the timed batch sizes — take at most
    ``headroom / fps`` seconds. 0 when even one frame does not fit.

    Raises:
        InputError: no timings, or a batch size outside 1..max_batch.
    """
    if not seconds_per_call or min(seconds_per_call) < 1 or max(seconds_per_call) > max_batch:
        raise InputError(f"timings must cover batch sizes in 1..{max_batch}, got {sorted(seconds_per_call)}")
    sizes = sorted(seconds_per_call)
    times = [seconds_per_call[size] for size in sizes]

    def call_s(batch: int) -> float:
        return 0.0 if batch == 0 else float(np.interp(batch, sizes, times))

    budget = headroom / fps
    fits = 0
    for sessions in range(1, limit + 1):
        if (sessions // max_batch) * call_s(max_batch) + call_s(sessions % max_batch) > budget:
            break
        fits = sessions
    return fits


def measure_capacity(engines: Iterable[Engine], max_batch: int, seconds: float = MEASURE_S
                     ) -> tuple[int, dict[int, float]]:
    """Time each engine on every batch size of ``batch_sizes`` and return the smallest capacity of them (a node
    whose twins use several engines is as full as its slowest one), with that engine's mean seconds per call."""
    best: tuple[int, dict[int, float]] | None = None
    for engine in engines:
        timings = {batch: float(np.mean(time_engine(engine, batch, seconds, min_calls=3)[0]))
                   for batch in batch_sizes(max_batch)}
        capacity = capacity_from_timings(timings, max_batch)
        if best is None or capacity < best[0]:
            best = (capacity, timings)
    if best is None:
        raise InputError("a render node needs at least one engine to measure")
    return best


# --- the render node (runs in its Ray actor's process) ----------------------------------------------------------

@dataclass(frozen=True)
class NodeOptions:
    """What every render node is given: its server's settings, the twin sources and the capacity rule."""

    config: ServeConfig
    sources: tuple[TwinSource, ...]
    operator_token: str
    capacity: int | None = None  # configured sessions per node; None: measured
    measure_s: float = MEASURE_S
    host: str | None = None  # the address the node's server binds; None: the Ray node's IP address


class RenderNode:
    """A render node: builds the twins' runtime, measures its capacity, and serves it (``twincast serve``'s app)
    on a free port from an event loop in its own thread, so the actor's methods stay free to answer.

    Wrapped with ``ray.remote`` by ``start_node``; every method is called through Ray.
    """

    def __init__(self, options: NodeOptions) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("aioice").setLevel(logging.WARNING)
        self.options = options
        self.runtime: TwinRuntime | None = None
        self.info: dict[str, Any] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="render-node-loop", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> dict[str, Any]:
        """Build and measure the runtime, start serving; returns the node's figures (``describe``)."""
        host = self.options.host or ray.util.get_node_ip_address()
        config = replace(self.options.config, host=host, port=0, max_sessions=MAX_NODE_SESSIONS,
                         operator_token=self.options.operator_token)
        started = time.monotonic()
        runtime = build_runtime(config, list(self.options.sources))
        measured, timings = measure_capacity(runtime.engines.values(), config.max_batch, self.options.measure_s)
        capacity = measured if self.options.capacity is None else self.options.capacity
        runtime.config = replace(config, max_sessions=max(1, min(capacity, MAX_NODE_SESSIONS)))
        self.runtime = runtime
        self._thread.start()
        port = self._call(self._serve(runtime), 120.0)
        self.info = {"address": f"http://{host}:{port}", "ip": host, "pid": os.getpid(), "capacity": capacity,
                     "measured_capacity": measured, "configured_capacity": self.options.capacity,
                     "ms_per_call": {str(batch): round(1000 * s, 3) for batch, s in timings.items()},
                     "engine": next(iter(runtime.engines.values())).describe()["engine"],
                     "start_s": round(time.monotonic() - started, 2)}
        log.info("render node serving %s: capacity %d (measured %d)", self.info["address"], capacity, measured)
        return self.describe()

    async def _serve(self, runtime: TwinRuntime) -> int:
        """Serve the runtime's app and return the port bound; the sessions ``start`` makes per twin are closed:
        live twins are placed one by one (``place``)."""
        from stream.app import create_app

        app = create_app(runtime, self.options.operator_token, None)
        close_sockets_on_shutdown(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, runtime.config.host, 0).start()
        for session_id in list(runtime.channels):
            await runtime.remove_session(session_id)
        return int(self._runner.addresses[0][1])

    def _call(self, coroutine: Any, timeout_s: float = NODE_CALL_TIMEOUT_S) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _runtime(self) -> TwinRuntime:
        if self.runtime is None:
            raise RuntimeError("render node not started")
        return self.runtime

    def ping(self) -> int:
        """The number of live twins (sessions) served: an answer means the node's process is alive."""
        return len(self._runtime().channels)

    def place(self, name: str, source: str) -> int:
        """Start live twin ``name`` as a session of twin source ``source``; returns the sessions served."""
        runtime = self._runtime()

        async def add() -> int:
            runtime.add_session(name, source)
            return len(runtime.channels)

        result: int = self._call(add())
        return result

    def remove(self, name: str) -> int:
        """Stop live twin ``name``; returns the sessions served."""
        runtime = self._runtime()

        async def drop() -> int:
            await runtime.remove_session(name)
            return len(runtime.channels)

        result: int = self._call(drop())
        return result

    def describe(self) -> dict[str, Any]:
        """The node's address, capacity (and what was measured), process id and the twins it serves."""
        runtime = self._runtime()
        return {**self.info, "twins": sorted(runtime.channels), "viewers": runtime.viewer_count}

    def stop(self) -> None:
        """Stop serving: viewers hung up, sessions closed, the render worker and engines released."""
        if self._runner is not None:
            self._call(self._runner.cleanup(), 60.0)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def start_node(options: NodeOptions, *, num_gpus: float = 0, num_cpus: float = 1) -> Any:
    """Create a render node actor (not yet started: call ``start``) with the given Ray resources."""
    actor_class = ray.remote(RenderNode)
    return actor_class.options(num_gpus=num_gpus, num_cpus=num_cpus, max_concurrency=4).remote(options)


# --- the front door's view of the cluster ----------------------------------------------------------------------

@dataclass
class NodeState:
    """A render node as the front door sees it."""

    name: str
    actor: Any
    info: dict[str, Any] = field(default_factory=dict)
    alive: bool = False
    twins: set[str] = field(default_factory=set)
    missed: int = 0
    died: str | None = None  # why it was declared dead

    @property
    def capacity(self) -> int:
        """Sessions it may hold (0 until it has started)."""
        return int(self.info.get("capacity", 0))

    @property
    def free(self) -> int:
        """Room left: capacity less the twins placed on it (or being placed)."""
        return self.capacity - len(self.twins) if self.alive else 0

    def describe(self) -> dict[str, Any]:
        """The node for ``GET /api/cluster``."""
        keys = ("address", "pid", "ip", "measured_capacity", "configured_capacity", "ms_per_call", "engine",
                "start_s")
        return {"name": self.name, "alive": self.alive, "capacity": self.capacity, "free": self.free,
                "twins": sorted(self.twins), "died": self.died, **{k: self.info.get(k) for k in keys}}


@dataclass
class LiveTwin:
    """A live twin: its twin source, the node it is on (None while it waits for room) and since when."""

    name: str
    source: str
    node: str | None = None
    since: float = 0.0  # time.time() when it went live on its node
    moves: int = 0

    def describe(self) -> dict[str, Any]:
        """The twin for ``GET /api/cluster``."""
        return {"name": self.name, "twin": self.source, "node": self.node,
                "state": "live" if self.node else "waiting", "since": self.since or None, "moves": self.moves}


class Cluster:
    """The front door's state: render nodes, live twins, placement, the watch over the nodes, and recovery.

    ``launch`` starts one render node actor (``start_node`` with the right resources); everything here runs on
    the front door's event loop.
    """

    def __init__(self, options: NodeOptions, launch: Callable[[NodeOptions], Any], *,
                 replace_dead: bool = True) -> None:
        self.options = options
        self.launch = launch
        self.replace_dead = replace_dead
        self.sources = {source.name: source for source in options.sources}
        self.nodes: dict[str, NodeState] = {}
        self.twins: dict[str, LiveTwin] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        self._counter = 0
        self._lock = asyncio.Lock()  # placement decisions are made one at a time
        self._tasks: set[asyncio.Task[Any]] = set()

    def event(self, kind: str, message: str, **details: Any) -> None:
        """Log and remember what happened (``GET /api/cluster`` shows the recent ones)."""
        log.info("%s: %s", kind, message)
        self.events.append({"at": time.time(), "kind": kind, "message": message, **details})

    # --- nodes ---

    async def add_node(self, timeout_s: float = REPLACE_TIMEOUT_S) -> NodeState:
        """Start a render node and wait until it serves (Ray may first need to find it room).

        Raises:
            TimeoutError: Ray could not place or start it within ``timeout_s`` (the actor is killed).
            RayActorError, or the node's own error: it failed to start.
        """
        self._counter += 1
        node = NodeState(f"node-{self._counter}", self.launch(self.options))
        self.nodes[node.name] = node
        try:
            node.info = await asyncio.wait_for(node.actor.start.remote(), timeout_s)
        except BaseException as exc:
            node.died = f"did not start: {exc}"[:500]
            with contextlib.suppress(Exception):
                ray.kill(node.actor)
            self.event("node_failed", f"{node.name} did not start: {exc}"[:500], node=node.name)
            raise
        node.alive = True
        self.event("node_up", f"{node.name} serves {node.info['address']} with capacity {node.capacity} "
                   f"(measured {node.info['measured_capacity']})", node=node.name)
        return node

    async def start(self, count: int) -> None:
        """Start ``count`` render nodes together, then keep watching them."""
        await asyncio.gather(*(self.add_node() for _ in range(count)))
        self._spawn(self.watch(), "watch render nodes")

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def capacities(self) -> list[dict[str, Any]]:
        """Every node's name, liveness, capacity and twins held (for refusals)."""
        return [{"node": n.name, "alive": n.alive, "capacity": n.capacity, "twins": len(n.twins)}
                for n in self.nodes.values()]

    # --- placing twins ---

    async def place(self, name: str, source: str | None = None) -> LiveTwin:
        """Start live twin ``name`` (of twin source ``source``; the one named ``name``, or else the first, when
        None) on the live node with the most free capacity.

        Raises:
            InputError: a bad or taken name.
            NotFoundError: no such twin source.
            ClusterFullError: no node has room.
        """
        if not isinstance(name, str) or not SESSION_ID.match(name):
            raise InputError(f"twin name {name!r} must be 1-40 letters, digits, '-' or '_'")
        if source is None:
            source = name if name in self.sources else next(iter(self.sources))
        if source not in self.sources:
            raise NotFoundError(f"no twin source {source!r}; the nodes load {sorted(self.sources)}")
        async with self._lock:
            if name in self.twins:
                raise InputError(f"a live twin named {name!r} exists already "
                                 f"({self.twins[name].node or 'waiting for room'})")
            twin = LiveTwin(name, source)
            self.twins[name] = twin
        try:
            await self._put(twin)
        except BaseException:
            self.twins.pop(name, None)
            raise
        return twin

    def _choose(self) -> NodeState:
        """The live node with the most free capacity (the first started among equals).

        Raises:
            ClusterFullError: none has room.
        """
        alive = [node for node in self.nodes.values() if node.alive]
        best = max(alive, key=lambda node: node.free, default=None)
        if best is None or best.free <= 0:
            figures = ", ".join(f"{c['node']} {c['twins']}/{c['capacity']}" + ("" if c["alive"] else " (dead)")
                                for c in self.capacities()) or "no render nodes"
            reason = "no live render node" if not alive else "every render node is at its capacity"
            raise ClusterFullError(f"no room for another twin: {reason} ({figures} twins/capacity)",
                                   self.capacities())
        return best

    async def _put(self, twin: LiveTwin) -> None:
        """Place a twin on the best node: reserve its place, start it there, or give the place back."""
        async with self._lock:
            node = self._choose()
            node.twins.add(twin.name)
        try:
            await asyncio.wait_for(node.actor.place.remote(twin.name, twin.source), NODE_CALL_TIMEOUT_S)
        except RayTaskError as exc:  # the node refused: its own error, as the node raised it
            node.twins.discard(twin.name)
            if isinstance(exc.cause, TwincastError):
                raise exc.cause from None
            raise
        except (RayActorError, TimeoutError) as exc:
            node.twins.discard(twin.name)
            self._spawn(self.check(node), f"check {node.name}")
            raise LimitError(f"render node {node.name} failed while placing {twin.name} ({type(exc).__name__}); "
                             "try again shortly", limit="node", value=0, http_status=503,
                             retry_after_s=WAITING_RETRY_S) from exc
        except BaseException:
            node.twins.discard(twin.name)
            raise
        twin.node, twin.since = node.name, time.time()
        self.event("twin_placed", f"{twin.name} is live on {node.name}", twin=twin.name, node=node.name)

    async def remove(self, name: str) -> None:
        """Stop a live twin, wherever it is.

        Raises:
            NotFoundError: no such live twin.
        """
        twin = self.twins.get(name)
        if twin is None:
            raise NotFoundError(f"no live twin {name!r}; live twins: {sorted(self.twins)}")
        del self.twins[name]
        node = self.nodes.get(twin.node or "")
        if node is not None and node.alive:
            node.twins.discard(name)
            with contextlib.suppress(RayActorError, TimeoutError):
                await asyncio.wait_for(node.actor.remove.remote(name), NODE_CALL_TIMEOUT_S)
        self.event("twin_removed", f"{name} stopped", twin=name)
        await self.place_waiting()

    async def place_waiting(self) -> None:
        """Place twins that lost their node on nodes with room, in the order they went live, while there is
        room."""
        for twin in sorted((t for t in self.twins.values() if t.node is None), key=lambda t: t.since):
            try:
                await self._put(twin)
            except ClusterFullError:
                return
            except (TwincastError, RayTaskError) as exc:
                log.warning("placing %s again failed: %s", twin.name, exc)

    # --- watching ---

    async def watch(self) -> None:
        """Ping every live node each ``PING_EVERY_S`` (for ever; cancel to stop)."""
        while True:
            await asyncio.gather(*(self.check(node) for node in list(self.nodes.values()) if node.alive))
            await asyncio.sleep(PING_EVERY_S)

    async def check(self, node: NodeState) -> bool:
        """Ping one node: dead on ``RayActorError`` or after ``MISSED_PINGS`` timeouts in a row; returns whether
        it is alive."""
        try:
            await asyncio.wait_for(node.actor.ping.remote(), PING_TIMEOUT_S)
        except ActorUnavailableError:  # unreachable for now (a network blip): counted like a ping with no answer
            return await self._missed(node)
        except RayActorError as exc:
            await self.node_died(node, f"its actor died: {type(exc).__name__}")
            return False
        except (TimeoutError, GetTimeoutError):
            return await self._missed(node)
        node.missed = 0
        return True

    async def _missed(self, node: NodeState) -> bool:
        """Count a ping without an answer; the ``MISSED_PINGS``-th in a row marks the node dead."""
        node.missed += 1
        if node.missed >= MISSED_PINGS:
            await self.node_died(node, f"{node.missed} pings in a row got no answer within {PING_TIMEOUT_S:g} s")
            return False
        return True

    async def node_died(self, node: NodeState, reason: str) -> None:
        """Take a dead node out: its twins wait for room and are placed again on nodes that have it; a
        replacement node is started (when ``replace_dead``), and the twins still waiting go there."""
        if not node.alive:
            return
        node.alive, node.died = False, reason
        with contextlib.suppress(Exception):
            ray.kill(node.actor)
        lost = sorted(node.twins)
        node.twins.clear()
        for name in lost:
            if name in self.twins:
                self.twins[name].node = None
                self.twins[name].moves += 1
        self.event("node_died", f"{node.name} is dead ({reason}); its twins {lost} wait for room", node=node.name,
                   twins=lost)
        await self.place_waiting()
        if self.replace_dead:
            self._spawn(self._replace(node), f"replace {node.name}")

    async def _replace(self, dead: NodeState) -> None:
        """Start a node in place of a dead one, then place the twins still waiting."""
        try:
            node = await self.add_node()
        except Exception as exc:  # noqa: BLE001 - logged by add_node; the twins wait for room elsewhere
            log.warning("no replacement for %s: %s", dead.name, exc)
            return
        self.event("node_replaced", f"{node.name} replaces {dead.name}", node=node.name, replaces=dead.name)
        await self.place_waiting()

    # --- reporting and stopping ---

    def describe(self) -> dict[str, Any]:
        """Nodes, live twins, the twin sources and recent events (``GET /api/cluster``)."""
        return {"nodes": [node.describe() for node in self.nodes.values()],
                "twins": [twin.describe() for twin in sorted(self.twins.values(), key=lambda t: t.name)],
                "sources": sorted(self.sources), "capacity": sum(n.capacity for n in self.nodes.values() if n.alive),
                "events": list(self.events)[-50:]}

    async def stop(self) -> None:
        """Stop watching, stop every live node's server, and end the actors."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        alive = [node for node in self.nodes.values() if node.alive]
        results = await asyncio.gather(*(asyncio.wait_for(node.actor.stop.remote(), 60) for node in alive),
                                       return_exceptions=True)
        for node, result in zip(alive, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("%s did not stop cleanly: %s", node.name, result)
            node.alive = False
            with contextlib.suppress(Exception):
                ray.kill(node.actor)


# --- the front door's HTTP surface --------------------------------------------------------------------------------

CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)
TOKEN: web.AppKey[str] = web.AppKey("cluster_token", str)
CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("cluster_client", aiohttp.ClientSession)


@web.middleware
async def operator_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """Everything under ``/api/`` needs the operator's bearer token; viewing (``/``, ``/whep``, the viewers' ICE
    servers) does not."""
    if request.path.startswith("/api/") and request.path != "/api/ice-servers":
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(hashlib.sha256(supplied.encode("utf-8", "surrogatepass")).digest(),
                                   hashlib.sha256(request.app[TOKEN].encode()).digest()):
            raise UnauthorizedError("the cluster API needs the operator's bearer token (TWINCAST_OPERATOR_TOKEN)")
    result: web.StreamResponse = await handler(request)
    return result


async def refuse_full(request: web.Request, handler: Any) -> web.StreamResponse:
    """A full cluster's refusal as JSON (503): the reason, the limit, and every node's capacity and twins."""
    try:
        result: web.StreamResponse = await handler(request)
    except ClusterFullError as exc:
        retry_s = exc.retry_after_s or WAITING_RETRY_S
        return web.json_response({"error": str(exc), "type": "ClusterFullError", "status": 503,
                                  "limit": {"name": exc.limit, "value": exc.value}, "retry_after_s": retry_s,
                                  "capacities": exc.capacities},
                                 status=503, headers={"Retry-After": str(max(1, math.ceil(retry_s)))})
    return result


async def cluster_state(request: web.Request) -> web.Response:
    """Nodes (alive, address, capacity, twins) and live twins (node, since)."""
    return web.json_response(request.app[CLUSTER].describe())


async def create_twin(request: web.Request) -> web.Response:
    """Place a new live twin: ``{"name": "…", "twin": "<source>"}`` (twin optional)."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise InputError(f'body must be JSON like {{"name": "shop-1", "twin": "anna"}}: {exc}') from exc
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise InputError('body must name the live twin: {"name": "…", "twin": "<twin source, optional>"}')
    source = body.get("twin")
    if source is not None and not isinstance(source, str):
        raise InputError(f"twin must be the name of a twin source, got {source!r}")
    twin = await request.app[CLUSTER].place(body["name"], source)
    return web.json_response(twin.describe(), status=201)


async def delete_twin(request: web.Request) -> web.Response:
    """Stop a live twin."""
    await request.app[CLUSTER].remove(request.match_info["name"])
    return web.Response(status=204)


def _twin_node(cluster: Cluster, name: str) -> NodeState:
    """The live node a live twin is on.

    Raises:
        NotFoundError: no such live twin.
        LimitError: the twin is waiting for room after its node died (503, retry soon).
    """
    twin = cluster.twins.get(name)
    if twin is None:
        raise NotFoundError(f"no live twin {name!r}; live twins: {sorted(cluster.twins)}")
    node = cluster.nodes.get(twin.node or "")
    if node is None or not node.alive:
        raise LimitError(f"twin {name!r} lost its render node and waits for room; try again shortly",
                         limit="node_capacity", value=sum(n.capacity for n in cluster.nodes.values() if n.alive),
                         http_status=503, retry_after_s=WAITING_RETRY_S)
    return node


async def whep_offer(request: web.Request) -> web.Response:
    """WHEP through the front door: ``POST /whep/{twin}`` (or ``/whep?session=TWIN``, as the player page sends)
    goes to the twin's node; a twin source's name not live yet is placed first. The answer's ``Location`` is
    rewritten to ``/whep/{twin}/{viewer}`` on the front door."""
    name = request.match_info.get("twin") or request.query.get("session") or ""
    cluster = request.app[CLUSTER]
    if name not in cluster.twins and name in cluster.sources:
        with contextlib.suppress(InputError):  # another viewer placed it meanwhile
            await cluster.place(name, name)
    node = _twin_node(cluster, name)
    offer = await request.content.read(MAX_SDP_BYTES + 1)
    if len(offer) > MAX_SDP_BYTES:
        raise LimitError(f"an SDP offer is at most {MAX_SDP_BYTES} bytes", limit="max_sdp_bytes",
                         value=MAX_SDP_BYTES, http_status=413)
    try:
        async with request.app[CLIENT].post(f"{node.info['address']}/whep", params={"session": name}, data=offer,
                                            headers={"Content-Type": "application/sdp"}) as response:
            body = await response.read()
            location = response.headers.get("Location", "")
            headers = CIMultiDict({"Location": f"/whep/{name}/{location.rsplit('/', 1)[-1]}"} if location else {})
            if "Retry-After" in response.headers:
                headers["Retry-After"] = response.headers["Retry-After"]
            for link in response.headers.getall("Link", []):  # the node's ICE servers (TURN credentials)
                headers.add("Link", link)
            return web.Response(status=response.status, body=body, headers=headers,
                                content_type=response.content_type)
    except (aiohttp.ClientError, TimeoutError) as exc:
        asyncio.create_task(cluster.check(node))  # noqa: RUF006 - a quicker look at a node that did not answer
        raise LimitError(f"render node {node.name} did not answer ({exc}); try again shortly", limit="node",
                         value=0, http_status=503, retry_after_s=WAITING_RETRY_S) from exc


async def ice_servers(request: web.Request) -> web.Response:
    """The viewers' ICE servers (STUN, TURN with short-lived credentials), as a render node hands them out: every
    node runs with the same serve configuration, so any live one will do."""
    alive = [node for node in request.app[CLUSTER].nodes.values() if node.alive]
    if not alive:
        raise LimitError("no render node is alive to hand out ICE servers; try again shortly", limit="node",
                         value=0, http_status=503, retry_after_s=WAITING_RETRY_S)
    try:
        async with request.app[CLIENT].get(f"{alive[0].info['address']}/api/ice-servers") as response:
            return web.Response(status=response.status, body=await response.read(),
                                content_type=response.content_type, headers={"Cache-Control": "no-store"})
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LimitError(f"render node {alive[0].name} did not answer ({exc}); try again shortly", limit="node",
                         value=0, http_status=503, retry_after_s=WAITING_RETRY_S) from exc


async def whep_delete(request: web.Request) -> web.Response:
    """WHEP hang-up through the front door, passed to the twin's node."""
    name, viewer = request.match_info["twin"], request.match_info["viewer_id"]
    node = _twin_node(request.app[CLUSTER], name)
    try:
        async with request.app[CLIENT].delete(f"{node.info['address']}/whep/{viewer}") as response:
            return web.Response(status=response.status, body=await response.read(),
                                content_type=response.content_type)
    except aiohttp.ClientError as exc:
        raise NotFoundError(f"viewer {viewer!r} went with render node {node.name}") from exc


async def healthz(request: web.Request) -> web.Response:
    """Liveness of the front door, with how many nodes are alive."""
    cluster = request.app[CLUSTER]
    return web.json_response({"status": "ok", "nodes_alive": sum(n.alive for n in cluster.nodes.values()),
                              "twins": len(cluster.twins)})


def create_front_door(cluster: Cluster, operator_token: str) -> web.Application:
    """The front door's aiohttp app: the cluster API, WHEP to the nodes, and the player page."""
    from stream.viewer_routes import player_page

    app = web.Application(middlewares=[errors_as_json, web.middleware(refuse_full), operator_only],
                          client_max_size=MAX_SDP_BYTES * 2)
    app[CLUSTER] = cluster
    app[TOKEN] = operator_token

    async def open_client(app: web.Application) -> None:
        app[CLIENT] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=5))

    async def close_client(app: web.Application) -> None:
        await app[CLIENT].close()

    app.on_startup.append(open_client)
    app.on_cleanup.append(close_client)
    app.router.add_get("/", player_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/cluster", cluster_state)
    app.router.add_get("/api/ice-servers", ice_servers)
    app.router.add_post("/api/cluster/twins", create_twin)
    app.router.add_delete("/api/cluster/twins/{name}", delete_twin)
    app.router.add_post("/whep", whep_offer)
    app.router.add_post("/whep/{twin}", whep_offer)
    app.router.add_delete("/whep/{twin}/{viewer_id}", whep_delete)
    return app


# --- running it -----------------------------------------------------------------------------------------------------

def check_ray_choice(workers: int | None, address: str | None) -> None:
    """Check the flags that choose Ray: ``--workers N`` or ``--address ADDR`` (both: N CPU nodes on that cluster).

    Raises:
        InputError: neither, or N outside 1..64.
    """
    if workers is None and address is None:
        raise InputError("give --workers N (a local Ray with N CPU render nodes) or --address ADDR (join a Ray "
                         "cluster: one render node per GPU)")
    if workers is not None and not 1 <= workers <= 64:
        raise InputError(f"--workers {workers} must be in 1..64")


def connect_ray(*, workers: int | None, address: str | None) -> tuple[int, float, float]:
    """Start a local Ray with room for ``workers`` CPU render nodes, or join the Ray cluster at ``address``;
    returns (render nodes to start, GPUs and CPUs each takes): one per GPU on a joined cluster (``workers`` CPU
    nodes there when it is given).

    Raises:
        InputError: bad flags (``check_ray_choice``), or a joined cluster without GPUs and no ``workers``.
    """
    check_ray_choice(workers, address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        assert workers is not None
        os.environ.setdefault("RAY_enable_worker_prestart", "0")  # no idle Python workers on a small machine
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        ray.init(address="local", num_cpus=2 * workers, num_gpus=0, include_dashboard=False,
                 object_store_memory=100 * 1024 * 1024, log_to_driver=False)
        return workers, 0.0, 1.0
    ray.init(address=address, include_dashboard=False)
    if workers is not None:
        return workers, 0.0, 1.0
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        ray.shutdown()
        raise InputError(f"the Ray cluster at {address!r} has no GPUs; add GPU nodes, or give --workers N for CPU "
                         "render nodes")
    return gpus, 1.0, 1.0


async def serve_cluster(options: NodeOptions, *, nodes: int, num_gpus: float, num_cpus: float, host: str,
                        port: int, announce: Callable[[str], None] = print) -> None:
    """Start ``nodes`` render nodes and the front door on ``host:port``; serve until SIGINT or SIGTERM, then stop
    the nodes. ``announce`` gets one line per node, then ``twincast serving http://HOST:PORT/``."""
    import signal

    cluster = Cluster(options, lambda opts: start_node(opts, num_gpus=num_gpus, num_cpus=num_cpus))
    runner: web.AppRunner | None = None
    try:
        await cluster.start(nodes)
        for node in cluster.nodes.values():
            announce(f"render node {node.name}: {node.info['address']} capacity {node.capacity} "
                     f"(measured {node.info['measured_capacity']}, {node.info['engine']})")
        runner = web.AppRunner(create_front_door(cluster, options.operator_token), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        announce(f"twincast serving http://{bound_host}:{bound_port}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down the front door and the render nodes")
    finally:
        if runner is not None:
            await runner.cleanup()
        await cluster.stop()


def run_cluster(config: ServeConfig, sources: list[TwinSource], *, workers: int | None, address: str | None,
                capacity: int | None, announce: Callable[[str], None] = print) -> int:
    """``twincast cluster``: check the twins, start or join Ray, serve the front door until a signal, then stop
    the render nodes and leave Ray (a local Ray is shut down with its processes).

    Raises:
        InputError: no twins, a missing pack or model, a bad capacity, or a bad choice of Ray (``connect_ray``).
    """
    import secrets

    if not sources:
        raise InputError("give at least one --twin NAME=PACK,MODEL for the render nodes to load")
    if capacity is not None and not 1 <= capacity <= MAX_NODE_SESSIONS:
        raise InputError(f"--capacity {capacity} must be in 1..{MAX_NODE_SESSIONS} live twins per render node")
    resolved = []
    for source in sources:
        for what, path in (("pack", source.pack), ("model", source.model)):
            if not path.exists():
                raise InputError(f"twin {source.name}: the {what} {str(path)!r} does not exist")
        resolved.append(TwinSource(source.name, source.pack.resolve(), source.model.resolve()))
    check_ray_choice(workers, address)
    token = config.operator_token
    if token is None:
        token = secrets.token_urlsafe(18)
        announce(f"operator token (shown once; set TWINCAST_OPERATOR_TOKEN to choose it): {token}")
    nodes, num_gpus, num_cpus = connect_ray(workers=workers, address=address)
    options = NodeOptions(config=replace(config, operator_token=None), sources=tuple(resolved),
                          operator_token=token, capacity=capacity)
    try:
        asyncio.run(serve_cluster(options, nodes=nodes, num_gpus=num_gpus, num_cpus=num_cpus, host=config.host,
                                  port=config.port, announce=announce))
    finally:
        ray.shutdown()
    return 0
