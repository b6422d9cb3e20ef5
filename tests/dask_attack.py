"""An attacker on the same machine as a dask cluster, for tests/test_dask_security.py.

    python dask_attack.py PLAN.json [--as-nobody]

The plan names the targets (``{"role": "scheduler"|"worker"|"nanny", "address":
"host:port"}``), the HTTP ports, the pids whose descriptors to try to open, and a
directory. Against every target the attacker tries what would run code there: the
scheduler's ``run_function`` and a worker's or nanny's ``run`` handler, each shipping a
function that writes a file named after the attempt into that directory. It tries over
plain TCP, over TLS without a client certificate, and over TLS with a certificate of its
own (trusting any server certificate, so that only the target can say no). It asks every
HTTP port for what dask serves there. Each outcome is one JSON line on stdout.

With ``--as-nobody`` (run as root) everything is imported first, then a forked child
drops to uid/gid ``nobody`` with ``os.setuid`` and attacks: another user of the machine,
whose own Python could not even be started from root's home.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import traceback
import urllib.error
import urllib.request
from typing import Any

import distributed.comm.tcp  # noqa: F401  (imported before any uid change)
from distributed.comm import connect
from distributed.protocol.pickle import dumps
from distributed.security import Security

NOBODY = 65534
HTTP_PATHS = ("/", "/health", "/metrics", "/info/main/workers.html", "/json/identity.json")
TIMEOUT = 5.0
WARM_UP_TIMEOUT = 0.5


def write_marker(path: str) -> str:
    """What the attacker wants run on the target: proof that it ran, and as whom."""
    with open(path, "w") as f:
        f.write(f"uid {os.getuid()} pid {os.getpid()}\n")
    return path


def _tls_context(own_certificate: Any) -> ssl.SSLContext:
    """A client context that trusts any server; with the attacker's own certificate or none."""
    if own_certificate is not None:
        context: ssl.SSLContext = own_certificate.get_connection_args("client")["ssl_context"]
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _attempt(
    role: str, address: str, attack: str, marker: str, own: Any, timeout: float = TIMEOUT
) -> dict[str, Any]:
    if attack == "plain":
        url, args = f"tcp://{address}", {}
    else:
        url = f"tls://{address}"
        args = {"ssl_context": _tls_context(own if attack == "tls-own-cert" else None)}
    message: dict[str, Any] = {"function": dumps(write_marker), "args": dumps((marker,))}
    if role == "scheduler":
        message.update(op="run_function", reply=True)
    else:
        message.update(op="run", wait=True, reply=True)
    outcome: dict[str, Any] = {"role": role, "address": address, "attack": attack}
    try:
        comm = await asyncio.wait_for(connect(url, timeout=timeout, **args), timeout)
    except BaseException as exc:
        return {**outcome, "outcome": "refused", "stage": "connect", "error": repr(exc)}
    try:
        await asyncio.wait_for(comm.write(message), timeout)
        reply = await asyncio.wait_for(comm.read(), timeout)
    except BaseException as exc:
        return {**outcome, "outcome": "refused", "stage": "exchange", "error": repr(exc)}
    finally:
        comm.abort()
    status = reply.get("status") if isinstance(reply, dict) else None
    return {**outcome, "outcome": "accepted", "status": status, "reply": repr(reply)[:300]}


def _http(port: int) -> list[dict[str, Any]]:
    outcomes = []
    for path in HTTP_PATHS:
        outcome: dict[str, Any] = {"role": "http", "address": f"127.0.0.1:{port}", "path": path}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as r:
                outcomes.append({**outcome, "outcome": "served", "status": r.status})
        except urllib.error.HTTPError as exc:
            outcomes.append({**outcome, "outcome": "not served", "status": exc.code})
        except OSError as exc:
            outcomes.append({**outcome, "outcome": "refused", "error": repr(exc)})
    return outcomes


def _steal(pids: list[int]) -> list[dict[str, Any]]:
    """Try to read the target processes' descriptors (memory files of the key among them)."""
    outcomes = []
    for pid in pids:
        outcome: dict[str, Any] = {"role": "process", "address": str(pid)}
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError as exc:
            outcomes.append({**outcome, "outcome": "refused", "error": repr(exc)})
            continue
        opened = []
        for name in names:
            try:  # opening is enough (and never blocks, even on a pipe)
                os.close(os.open(f"/proc/{pid}/fd/{name}", os.O_RDONLY | os.O_NONBLOCK))
                opened.append(name)
            except OSError:
                pass
        outcomes.append({**outcome, "outcome": "opened" if opened else "refused", "fds": opened})
    return outcomes


def _warm_up(own: Any) -> None:
    """Run every attempt once against a closed port: what distributed imports on first use
    is imported now, while the files are still readable."""
    import tornado.platform.asyncio  # noqa: F401

    async def attempts() -> None:
        for name in ("plain", "tls-no-cert", "tls-own-cert"):
            await _attempt("worker", "127.0.0.1:1", name, os.devnull, own, WARM_UP_TIMEOUT)

    asyncio.run(attempts())


def attack(plan: dict[str, Any], own: Any) -> list[dict[str, Any]]:
    """Every attempt of the plan; ``own`` is the attacker's own ``Security``."""
    attacks = ("plain", "tls-no-cert", "tls-own-cert")

    async def everything() -> list[dict[str, Any]]:
        results = []
        for i, target in enumerate(plan["targets"]):
            for attack_name in attacks:
                marker = os.path.join(plan["markers"], f"{target['role']}-{i}-{attack_name}")
                results.append(
                    await _attempt(target["role"], target["address"], attack_name, marker, own)
                )
        return results

    results = asyncio.run(everything())
    for port in plan.get("http_ports", []):
        results.extend(_http(port))
    results.extend(_steal(plan.get("pids", [])))
    return results


def main() -> int:
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    # A certificate, but not one the cluster's key signed. Made before any uid change: as
    # nobody, nothing more can be imported from root's home.
    own = Security.temporary()
    _warm_up(own)
    if "--as-nobody" not in sys.argv:
        print(json.dumps({"uid": os.getuid(), "results": attack(plan, own)}), flush=True)
        return 0
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            print(json.dumps({"uid": os.getuid(), "results": attack(plan, own)}), flush=True)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
