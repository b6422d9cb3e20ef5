"""The floors: what the same workloads cost with no pool at all.

Bare ``multiprocessing`` processes and Connections of the same start method, a raw
``os.pipe`` echo between this process and a forked child, and serial in-process work. They show
how far each pool is from the limit of the machine and of ``multiprocessing`` itself.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional, Union

from poolkit_bench_runner import tasks
from poolkit_bench_runner.workloads import Values, memory_values, percentile

_ECHO_STOP = b"stop"


def _bare_child(conn: Connection) -> None:
    """A process that only says it is up, then waits to be told to exit."""
    conn.send_bytes(b"r")
    try:
        conn.recv_bytes()
    except EOFError:
        pass


def _echo_child(conn: Connection) -> None:
    """Echo every pickled object until told to stop."""
    while True:
        obj = conn.recv()
        if obj == _ECHO_STOP:
            return
        conn.send(obj)


def _start_bare(method: str, count: int) -> tuple[list[Any], list[Connection], float, float]:
    context = multiprocessing.get_context(method)
    started = time.perf_counter()
    processes, conns = [], []
    for _ in range(count):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_bare_child, args=(child_end,))  # type: ignore[attr-defined]
        process.start()
        child_end.close()
        processes.append(process)
        conns.append(parent_end)
    waiting = list(conns)
    first = 0.0
    while waiting:
        for conn in wait(waiting):
            assert isinstance(conn, Connection)
            conn.recv_bytes()
            waiting.remove(conn)
            if not first:
                first = time.perf_counter() - started
    return processes, conns, first, time.perf_counter() - started


def _stop_bare(processes: list[Any], conns: list[Connection]) -> None:
    for conn in conns:
        conn.send_bytes(b"x")
        conn.close()
    for process in processes:
        process.join()


def floor_cold(method: str, workers: int, params: dict[str, Any]) -> Values:
    """``workers`` bare processes started together: first one up, all up."""
    processes, conns, first, ready = _start_bare(method, workers)
    _stop_bare(processes, conns)
    return {"first_ms": first * 1e3, "ready_ms": ready * 1e3}


def floor_respawn(method: str, workers: int, params: dict[str, Any]) -> Values:
    """One bare process start: what replacing a worker cannot beat."""
    _stop_bare(*_start_bare(method, 1)[:2])  # warm-up (starts the fork server, if any)
    samples = []
    for _ in range(int(params.get("kills", 3))):
        processes, conns, first, _ = _start_bare(method, 1)
        samples.append(first)
        _stop_bare(processes, conns)
    return {"respawn_ms": statistics.median(samples) * 1e3}


def _with_echo(method: str, body: Callable[[Connection], Values]) -> Values:
    context = multiprocessing.get_context(method)
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_echo_child, args=(child_end,))  # type: ignore[attr-defined]
    process.start()
    child_end.close()
    try:
        return body(parent_end)
    finally:
        parent_end.send(_ECHO_STOP)
        process.join()
        parent_end.close()


def floor_latency(method: str, workers: int, params: dict[str, Any]) -> Values:
    """Round trip of a pickled tuple over a Connection, and of 8 bytes over raw pipes."""
    warmup, count = int(params["warmup"]), int(params["samples"])

    def connection_round_trips(conn: Connection) -> Values:
        message: tuple[Any, ...] = (1, "noop", (), {})
        for _ in range(warmup):
            conn.send(message)
            conn.recv()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(count):
            start = clock()
            conn.send(message)
            conn.recv()
            samples.append(clock() - start)
        return {
            "median_us": statistics.median(samples) / 1e3,
            "p99_us": percentile(samples, 99) / 1e3,
        }

    values = _with_echo(method, connection_round_trips)
    raw = raw_pipe_round_trips(warmup, count)
    values["raw_median_us"] = statistics.median(raw) / 1e3
    values["raw_p99_us"] = percentile(raw, 99) / 1e3
    return values


def raw_pipe_round_trips(
    warmup: int,
    count: int,
    parent_cpu: Optional[int] = None,
    child_cpu: Optional[int] = None,
) -> list[int]:
    """Round trips of 8 bytes over two ``os.pipe``s to a forked echoing child, in ns.

    ``parent_cpu`` / ``child_cpu``: the CPU each end runs on while it measures (None: where the
    kernel likes). Forks: call it from a process without threads (the runner; the round-trip
    profile's floor process).
    """
    from_parent, to_child = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: echo 8 bytes until end-of-file
        os.close(to_child)
        os.close(from_child)
        try:
            if child_cpu is not None:
                os.sched_setaffinity(0, {child_cpu})
            while True:
                data = os.read(from_parent, 8)
                if not data:
                    break
                os.write(to_parent, data)
        finally:
            os._exit(0)
    os.close(from_parent)
    os.close(to_parent)
    samples = []
    clock = time.perf_counter_ns
    saved = os.sched_getaffinity(0) if parent_cpu is not None else None
    try:
        if parent_cpu is not None:
            os.sched_setaffinity(0, {parent_cpu})
        for i in range(warmup + count):
            start = clock()
            os.write(to_child, b"12345678")
            os.read(from_child, 8)
            if i >= warmup:
                samples.append(clock() - start)
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
        os.close(to_child)
        os.close(from_child)
        os.waitpid(pid, 0)
    return samples


def floor_pipeline(method: str, workers: int, params: dict[str, Any]) -> Values:
    """Small pickled messages streamed through a Connection echo: messages per second."""
    count = int(params.get("tasks", params.get("items", 10000)))

    def pipeline(conn: Connection) -> Values:
        message: tuple[Any, ...] = (1, "noop", (), {})

        def send_all() -> None:
            for _ in range(count):
                conn.send(message)

        start = time.perf_counter()
        sender = threading.Thread(target=send_all)
        sender.start()
        for _ in range(count):
            conn.recv()
        sender.join()
        return {"rate": count / (time.perf_counter() - start)}

    return _with_echo(method, pipeline)


def floor_mapchunk(method: str, workers: int, params: dict[str, Any]) -> Values:
    """Serial, in this process: no pool beats it on trivially small tasks."""
    items = int(params["items"])
    start = time.perf_counter()
    list(map(tasks.ident, range(items)))
    return {"rate": items / (time.perf_counter() - start)}


def floor_cpu(method: str, workers: int, params: dict[str, Any]) -> Values:
    """The ideal speed-up: one per worker, at most one per CPU this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"speedup": float(min(workers, cpus or 1))}


class _RawChild:
    """A forked child on two raw pipes, serving requests for ``size``-byte payloads.

    ``a``: the parent sends a payload, the child acknowledges with one byte; ``r``: the child
    sends one; ``e``: the parent sends one and the child sends it back, once it has it whole.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.blob = b"\x01" * size
        from_parent, self._to_child = os.pipe()
        self._from_child, to_parent = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._to_child)
            os.close(self._from_child)
            try:
                self._serve(from_parent, to_parent)
            finally:
                os._exit(0)
        os.close(from_parent)
        os.close(to_parent)

    def _serve(self, inbox: int, outbox: int) -> None:
        while True:
            request = os.read(inbox, 1)
            if not request:
                return
            if request == b"r":
                _write_all(outbox, self.blob)
                continue
            data = _read_exactly(inbox, self.size)
            _write_all(outbox, b"k" if request == b"a" else data)

    def seconds(self, request: bytes) -> float:
        """One request's round trip, in seconds."""
        start = time.perf_counter()
        os.write(self._to_child, request)
        if request != b"r":
            _write_all(self._to_child, self.blob)
        _read_exactly(self._from_child, 1 if request == b"a" else self.size)
        return time.perf_counter() - start

    def close(self) -> None:
        os.close(self._to_child)
        os.close(self._from_child)
        os.waitpid(self.pid, 0)


def _raw_rates(params: dict[str, Any], requests: dict[str, bytes]) -> Values:
    """MiB/s of each request through a :class:`_RawChild` (median of the reps, after one)."""
    child = _RawChild(int(float(params["mib"]) * (1 << 20)))
    times: dict[str, list[float]] = {key: [] for key in requests}
    try:
        for rep in range(int(params["reps"]) + 1):
            for key, request in requests.items():
                elapsed = child.seconds(request)
                if rep:  # the first is a warm-up
                    times[key].append(elapsed)
    finally:
        child.close()
    mib = child.size / (1 << 20)
    return {key: mib / statistics.median(samples) for key, samples in times.items()}


def floor_payload(method: str, workers: int, params: dict[str, Any]) -> Values:
    """MiB/s through a raw pipe to and from a forked child."""
    return _raw_rates(params, {"arg_mibs": b"a", "result_mibs": b"r"})


def floor_array(method: str, workers: int, params: dict[str, Any]) -> Values:
    """The array's bytes to a forked child and back over raw pipes: MiB/s, one way counted."""
    return _raw_rates(params, {"mibs": b"e"})


def _write_all(fd: int, data: Union[bytes, bytearray]) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("the floor's child closed its pipe early")
        got += n
    return buffer


def floor_memory(method: str, workers: int, params: dict[str, Any]) -> Values:
    """``workers`` bare idle processes of the same start method, measured as a pool is."""
    processes, conns, _, _ = _start_bare(method, workers)
    try:
        time.sleep(0.05)
        return memory_values({process.pid for process in processes})
    finally:
        _stop_bare(processes, conns)


FLOORS: dict[str, Callable[[str, int, dict[str, Any]], Values]] = {
    "cold": floor_cold,
    "respawn": floor_respawn,
    "latency": floor_latency,
    "burst": floor_pipeline,
    "map1": floor_pipeline,
    "mapchunk": floor_mapchunk,
    "mapdefault": floor_mapchunk,
    "cpu": floor_cpu,
    "payload": floor_payload,
    "array": floor_array,
    "memory": floor_memory,
}
