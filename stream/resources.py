"""What the server process holds right now, for finding leaks: ``GET /api/debug/resources`` (operator only).

Peer connections and relay subscriptions are counted by the runtime's ``peers.Census`` (weakly, so one that
outlives its owner still counts); tasks, threads, file descriptors and memory are the process's own. Counts that
only Linux's ``/proc`` gives are ``None`` elsewhere.

Resident memory (RSS) also holds heap the allocator has freed but kept: after a burst of peers (each with its
codec threads) glibc kept 50 MB of it in one measurement, far more than any leak. ``collect`` therefore also
hands freed heap back to the system (``malloc_trim``, where the C library has it) before reading RSS, so that RSS
follows live memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from aiohttp import web

from stream.http_common import RUNTIME
from stream.runtime import TwinRuntime

PROC_SELF = Path("/proc/self")
TOP_TASK_KINDS = 12


class ResourceStats(TypedDict):
    """The process's resources: peers (held by channels, in memory, not closed), live relay subscriptions,
    asyncio tasks (with the commonest coroutines), threads, open file descriptors by kind, resident memory."""

    peers_held: int
    peers_alive: int
    peers_unclosed: int
    relay_subscriptions: int
    tasks: int
    task_kinds: dict[str, int]
    threads: int
    os_threads: int | None
    open_fds: int | None
    fd_kinds: dict[str, int]
    rss_bytes: int | None


def _task_kind(task: asyncio.Task[object]) -> str:
    coroutine = task.get_coro()
    return getattr(coroutine, "__qualname__", type(coroutine).__name__)


def _fd_kinds() -> dict[str, int] | None:
    """Open file descriptors by kind (``socket``, ``pipe``, ``anon_inode:[eventfd]``, ``file``)."""
    folder = PROC_SELF / "fd"
    if not folder.is_dir():
        return None
    kinds: Counter[str] = Counter()
    for entry in folder.iterdir():
        try:
            target = os.readlink(entry)
        except FileNotFoundError:  # the descriptor that listed the folder, closed since
            continue
        kinds[target.split(":[")[0] if target.startswith(("socket:", "pipe:")) else
              target if target.startswith("anon_inode:") else "file"] += 1
    return dict(kinds)


def _status_field(name: str) -> int | None:
    """A number from ``/proc/self/status`` (``VmRSS`` in kB, ``Threads``), None where there is no ``/proc``."""
    path = PROC_SELF / "status"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value.split()[0])
    return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None under another C library."""
    name = ctypes.util.find_library("c")
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return trim


def resource_usage(runtime: TwinRuntime, *, collect: bool = False) -> ResourceStats:
    """Count what the process holds; ``collect`` first runs the garbage collector, so that only objects still
    referenced count (peer connections are full of reference cycles and otherwise wait for a collection), and
    returns freed heap to the system (see the module docstring)."""
    if collect:
        gc.collect()
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
    alive, unclosed = runtime.census.peers()
    tasks = asyncio.all_tasks()
    fds = _fd_kinds()
    rss_kb = _status_field("VmRSS")
    return {
        "peers_held": sum(len(channel.peers()) for channel in runtime.channels.values()),
        "peers_alive": alive,
        "peers_unclosed": unclosed,
        "relay_subscriptions": runtime.census.live_subscriptions(),
        "tasks": len(tasks),
        "task_kinds": dict(Counter(_task_kind(task) for task in tasks).most_common(TOP_TASK_KINDS)),
        "threads": threading.active_count(),
        "os_threads": _status_field("Threads"),
        "open_fds": sum(fds.values()) if fds is not None else None,
        "fd_kinds": fds or {},
        "rss_bytes": rss_kb * 1024 if rss_kb is not None else None,
    }


async def debug_resources(request: web.Request) -> web.Response:
    """Open peers, relay subscriptions, tasks, threads, file descriptors and memory (``?collect=1``: after a
    garbage collection and a heap trim)."""
    collect = request.query.get("collect", "0") not in ("0", "", "false")
    return web.json_response(resource_usage(request.app[RUNTIME], collect=collect))
