"""What mutual TLS costs the dask cluster poolkit starts: start time, round trip, bursts.

    python benchmarks/dask_tls.py                 # 3 interleaved rounds, 2 workers
    python benchmarks/dask_tls.py --rounds 5 --workers 2 --json /tmp/dask_tls.json

Each round starts two LocalClusters the way ``Executor(backend="dask")`` does
(``poolkit._dask.executor._start_local_cluster``: one thread per worker, loopback, the scheduler
settings of ``LOCAL_CLUSTER_CONFIG``), one over TLS with the credentials poolkit makes
(``PrivateCluster``) and one over plain TCP, in alternating order, and measures through a
poolkit executor on each:

- start: ``LocalCluster(...)`` until every worker is registered, plus (TLS only) the time
  to make the credentials (an RSA key and a certificate);
- round trip: ``submit(noop).result()`` one after another (median per task);
- burst: ``submit`` of many no-ops at once, until all are done (tasks per second);
- map: ``map(noop, range(N))`` with the default chunking.

Medians over rounds, the ratio TLS / plain, the machine and the load are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any


def noop(x: Any = None) -> Any:
    return x


def _uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load average " + ", ".join(f.read().split()[:3])


def _start(tls: bool, workers: int) -> tuple[Any, Any, dict[str, float]]:
    import dask.config
    import distributed

    from poolkit._dask.executor import LOCAL_CLUSTER_CONFIG, _nanny_without_dashboard
    from poolkit._dask.security import PrivateCluster

    timings: dict[str, float] = {}
    began = time.perf_counter()
    private = PrivateCluster() if tls else None
    timings["credentials_s"] = time.perf_counter() - began
    options: dict[str, Any] = {"protocol": "tcp"}
    if private is not None:
        options = {"protocol": "tls", "security": private.security}
    began = time.perf_counter()
    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            worker_dashboard_address="127.0.0.1:0",
            worker_class=_nanny_without_dashboard(distributed),
            **options,
        )
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(workers)
    timings["cluster_s"] = time.perf_counter() - began
    return (cluster, private), client, timings


def _measure(client: Any, tasks: int, items: int) -> dict[str, float]:
    import poolkit

    results: dict[str, float] = {}
    with poolkit.Executor(backend="dask", client=client) as ex:
        for _ in range(20):  # warm: connections, function caches
            ex.submit(noop).result()
        samples = []
        for _ in range(200):
            began = time.perf_counter()
            ex.submit(noop).result()
            samples.append(time.perf_counter() - began)
        results["round_trip_ms"] = statistics.median(samples) * 1e3
        began = time.perf_counter()
        futures = [ex.submit(noop, i) for i in range(tasks)]
        for future in futures:
            future.result()
        results["burst_tasks_per_s"] = tasks / (time.perf_counter() - began)
        began = time.perf_counter()
        assert sum(ex.map(noop, range(items))) == items * (items - 1) // 2
        results["map_s"] = time.perf_counter() - began
    return results


def _one(tls: bool, workers: int, tasks: int, items: int) -> dict[str, float]:
    (cluster, private), client, timings = _start(tls, workers)
    try:
        timings.update(_measure(client, tasks, items))
    finally:
        client.close()
        cluster.close()
        if private is not None:
            private.close()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per burst")
    parser.add_argument("--items", type=int, default=20000, help="items of the map")
    parser.add_argument("--json", help="also write the samples here")
    args = parser.parse_args(argv)

    import cryptography
    import distributed

    print(
        f"python {platform.python_version()}, distributed {distributed.__version__}, "
        f"cryptography {cryptography.__version__}, {os.cpu_count()} CPUs; {args.workers} "
        f"workers; {_uptime()} (before)"
    )
    samples: dict[str, list[dict[str, float]]] = {"tls": [], "tcp": []}
    for round_number in range(args.rounds):
        order = ("tls", "tcp") if round_number % 2 == 0 else ("tcp", "tls")
        for name in order:
            samples[name].append(_one(name == "tls", args.workers, args.tasks, args.items))
    print(f"{_uptime()} (after)")
    metrics = ("credentials_s", "cluster_s", "round_trip_ms", "burst_tasks_per_s", "map_s")

    def median(name: str, metric: str) -> float:
        return statistics.median(s[metric] for s in samples[name])

    title = f"median of {args.rounds} rounds"
    print(f"{title:<24}{'tls':>12}{'tcp':>12}{'tls/tcp':>10}")
    for metric in metrics:
        tls, tcp = median("tls", metric), median("tcp", metric)
        ratio = f"{tls / tcp:.2f}" if metric != "credentials_s" else "-"
        print(f"{metric:<24}{tls:>12.3f}{tcp:>12.3f}{ratio:>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(samples, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
