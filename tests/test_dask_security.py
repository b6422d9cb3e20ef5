"""The dask cluster poolkit starts is its owner's alone: tested as an attacker would.

(Nothing here imports distributed at collection: its import changes exception pickling
for every later test module; the ``distributed`` fixture of test_dask undoes it.)

An attacker (``dask_attack.py``) in another process, without the cluster's credentials,
tries to run code on the scheduler, on every worker and on every nanny, over plain TCP and
over TLS with no certificate or one of its own; it asks every HTTP port for what dask
serves. Where the tests run as root it does so once more as ``nobody``. The same attacker
against a plain-TCP cluster (the positive control) does run its code there, which shows
that its failures against poolkit's cluster are refusals and not its own.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import _infrastructure, _open_fds, descendants, wait_gone
from proc_sockets import listening_tcp_ports
from test_dask import _CLUSTER_SCRIPT, _env, _read_line, _stop
from test_dask import distributed as distributed  # the fixture (and its copyreg undo)

import poolkit
from poolkit._dask import security as _dask_security
from poolkit._dask.executor import LOCAL_CLUSTER_CONFIG, DaskExecutor

ATTACKER = str(Path(__file__).with_name("dask_attack.py"))
IS_ROOT = os.geteuid() == 0
#: Who attacks: another process of the same user, and (as root) a process of another user.
ATTACKERS = [
    "same-user",
    pytest.param("nobody", marks=pytest.mark.skipif(not IS_ROOT, reason="setuid needs root")),
]
CONTROL_ATTACKER = "nobody" if IS_ROOT else "same-user"
#: What the attacker's failures may never be: its own trouble rather than a refusal.
ATTACKER_TROUBLE = ("ImportError", "ModuleNotFoundError", "PermissionError", "NameError")

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:the dask scheduler at tcp.*:UserWarning"),
]

_module_pids: set[int] = set()  # processes of the module's clusters, spared by no_leaks
_module_threads: set[threading.Thread] = set()  # and the thread of its executor


@pytest.fixture(scope="module")
def own(distributed: Any) -> Iterator[DaskExecutor]:
    """An executor on the cluster poolkit starts (2 workers), shared by the module."""
    pytest.importorskip("cryptography")
    before = descendants(os.getpid())
    fds_before = _open_fds()
    ex = poolkit.Executor(backend="dask", max_workers=2)
    assert isinstance(ex, DaskExecutor)
    pids = descendants(os.getpid()) - before
    _module_pids.update(pids)
    _module_threads.add(ex._session.thread)
    directory = ex._session.private.directory  # type: ignore[union-attr]
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)
        _module_pids.difference_update(pids)
        _module_threads.clear()
    assert not wait_gone(pids, timeout=20), "cluster processes left running"
    assert not os.path.exists(directory), "the cluster's private directory is left"
    # Everything the cluster opened in this process is closed: sockets, memory files.
    assert not _new_fds(fds_before, kinds=None), "descriptors left open by the cluster"


@pytest.fixture(scope="module")
def plain_cluster(distributed: Any) -> Iterator[str]:
    """The scheduler address of a plain-TCP LocalCluster (as a user might bring one)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER_SCRIPT, json.dumps(LOCAL_CLUSTER_CONFIG)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    pids: set[int] = set()
    try:
        address = json.loads(_read_line(process, 60))["address"]
        with distributed.Client(address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=30)
        pids = {process.pid} | descendants(process.pid)
        _module_pids.update(pids)
        yield address
    finally:
        _stop(process)
        _module_pids.difference_update(pids)
    assert not wait_gone(pids, timeout=10), "plain cluster processes left running"


def _new_fds(before: dict[int, str], kinds: Optional[tuple[str, ...]]) -> dict[int, str]:
    """Descriptors opened since ``before`` and still open (a grace period for dask's loop
    thread to close sockets), of the given kinds (link target prefixes) or of any kind."""
    deadline = time.monotonic() + 5
    while True:
        new = {fd: t for fd, t in _open_fds().items() if before.get(fd) != t}
        if kinds is not None:
            new = {fd: t for fd, t in new.items() if t.startswith(kinds)}
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """conftest's check, sparing the module's clusters: no thread, process or fd left.

    The module's own cluster runs its scheduler and nannies in this process, and their
    connection pools grow as tests use them: sockets are checked when it is shut down.
    """
    fds_before = _open_fds()
    yield
    for thread in set(threading.enumerate()) - _module_threads:
        if thread.name in ("poolkit-dask", "poolkit-dispatcher"):
            thread.join(20)
            assert not thread.is_alive(), f"a {thread.name} thread is still running"
    leftover = descendants(os.getpid()) - _infrastructure() - _module_pids
    assert not wait_gone(leftover, timeout=10), f"processes left running: {sorted(leftover)}"
    sockets = ("socket:",) if _module_threads else ()
    new = _new_fds(fds_before, kinds=None)
    new = {fd: t for fd, t in new.items() if not t.startswith(sockets or ("\0",))}
    assert not new, f"descriptors left open: {new}"


# ------------------------------------------------------------------ the attacker


def _location(address: str) -> str:
    return address.split("://", 1)[1]


def _plan(client: Any, pids: set[int], markers: Path) -> dict[str, Any]:
    """Every endpoint of the cluster behind ``client``, for the attacker."""
    targets = [{"role": "scheduler", "address": _location(client.scheduler.address)}]
    for address, worker in client.scheduler_info()["workers"].items():
        targets.append({"role": "worker", "address": _location(address)})
        targets.append({"role": "nanny", "address": _location(worker["nanny"])})
    dask_ports = {int(t["address"].rsplit(":", 1)[1]) for t in targets}
    http_ports = sorted(listening_tcp_ports(pids) - dask_ports)
    plan = {"targets": targets, "http_ports": http_ports, "pids": sorted(pids)}
    return {**plan, "markers": str(markers)}


def _attack(plan: dict[str, Any], who: str, tmp_path: Path) -> list[dict[str, Any]]:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    command = [sys.executable, ATTACKER, str(plan_file)]
    if who == "nobody":
        # The plan is read before the uid changes; the markers are the victim's to write.
        command.append("--as-nobody")
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["uid"] == (65534 if who == "nobody" else os.getuid())
    results: list[dict[str, Any]] = report["results"]
    return results


def _network(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["role"] in ("scheduler", "worker", "nanny")]


@pytest.mark.parametrize("who", ATTACKERS)
def test_own_cluster_refuses_every_other_process(
    own: DaskExecutor, who: str, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    pids = {os.getpid(), *own.client.run(os.getpid).values()}
    plan = _plan(own.client, pids, markers)
    assert len(plan["targets"]) == 5  # the scheduler, 2 workers, their 2 nannies
    results = _attack(plan, who, tmp_path)

    network = _network(results)
    assert len(network) == 15 and {r["attack"] for r in network} == {
        "plain",
        "tls-no-cert",
        "tls-own-cert",
    }
    accepted = [r for r in network if r["outcome"] != "refused"]
    assert not accepted, f"the cluster let an attacker in: {accepted}"
    trouble = [r for r in network if any(t in r["error"] for t in ATTACKER_TROUBLE)]
    assert not trouble, f"the attacker failed by itself, not refused: {trouble}"
    assert not list(markers.iterdir()), "an attacker's code ran on the cluster"
    # The HTTP servers dask starts anyway (no dashboard) serve nothing.
    http = [r for r in results if r["role"] == "http"]
    assert plan["http_ports"] and http
    assert {r["status"] for r in http} == {404}, http
    if who == "nobody":  # nor can another user open the processes' descriptors (the key)
        steal = [r for r in results if r["role"] == "process"]
        assert len(steal) == len(pids) and {r["outcome"] for r in steal} == {"refused"}
    assert own.submit(pow, 2, 8).result(timeout=30) == 256  # and the owner still gets in


def test_the_attacker_gets_into_a_plain_cluster(
    distributed: Any, plain_cluster: str, tmp_path: Path
) -> None:
    """The positive control: the attack works, so its failures above are refusals."""
    who = CONTROL_ATTACKER
    markers = tmp_path / "markers"
    markers.mkdir()
    with distributed.Client(plain_cluster, set_as_default=False) as client:
        pids = set(client.run(os.getpid).values()) | {client.run_on_scheduler(os.getpid)}
        plan = _plan(client, pids, markers)
    results = _attack(plan, who, tmp_path)
    plain = [r for r in _network(results) if r["attack"] == "plain"]
    assert len(plain) == 5 and {r["outcome"] for r in plain} == {"accepted"}, plain
    assert {r["status"] for r in plain} == {"OK"}, plain
    written = sorted(p.name for p in markers.iterdir())
    assert len(written) == 5 and all(name.endswith("-plain") for name in written)
    # The code ran as the cluster's user, whoever sent it.
    assert all(p.read_text().startswith(f"uid {os.getuid()} ") for p in markers.iterdir())


# ------------------------------------------------------------ credentials, files


def test_credentials_live_in_memory_files_only(own: DaskExecutor) -> None:
    """The key is never in a file another process could open: dask gets memory files."""
    from poolkit._dask.credentials import MemorySecurity

    security = own.cluster.security
    assert isinstance(security, MemorySecurity)
    assert "BEGIN CERTIFICATE" in security.tls_ca_file  # the CA: in memory (ssl's cadata)

    def where_the_credentials_are(dask_worker: Any = None) -> list[str]:
        held = dask_worker.security if dask_worker is not None else security
        found = []
        for role in ("client", "scheduler", "worker"):
            for part in ("cert", "key"):
                path = getattr(held, f"tls_{role}_{part}")
                found.append(f"{path} -> {os.readlink(path)}")
        return found

    everywhere = [where_the_credentials_are()]
    everywhere += list(own.client.run(where_the_credentials_are).values())
    assert len(everywhere) == 3
    for found in everywhere:
        for entry in found:
            path, target = entry.split(" -> ")
            assert path.startswith("/proc/self/fd/")  # a path: dask never writes it out
            assert target.startswith("/memfd:poolkit-dask-") and target.endswith("(deleted)")


def test_no_dashboard_anywhere(own: DaskExecutor) -> None:
    """The HTTP servers have an address on loopback (required: distributed 2024.8 would
    bind a worker's to every interface), yet no worker runs its dashboard."""
    flags = own.client.run(
        lambda dask_worker: (dask_worker._dashboard, dask_worker._dashboard_address)
    )
    assert list(flags.values()) == [(False, "127.0.0.1:0")] * 2


def test_scratch_space_is_a_private_directory(own: DaskExecutor) -> None:
    directory = own._session.private.directory  # type: ignore[union-attr]
    info = os.stat(directory)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    local = list(own.client.run(lambda dask_worker: dask_worker.local_directory).values())
    local.append(own.cluster.scheduler.local_directory)
    assert len(local) == 3 and all(d.startswith(directory + os.sep) for d in local), local


_HOLD_A_DIRECTORY = """
import os, signal, sys
from poolkit._dask.security import PrivateCluster
private = PrivateCluster()
print(private.directory, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def test_a_killed_owners_directory_is_removed_by_the_next_cluster(distributed: Any) -> None:
    pytest.importorskip("cryptography")
    owners = {
        how: subprocess.Popen(
            [sys.executable, "-c", _HOLD_A_DIRECTORY, how],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for how in ("kill", "live")
    }
    try:
        directories = {how: _read_line(p, 30).strip() for how, p in owners.items()}
        assert owners["kill"].wait(30) == -9
        assert all(os.path.isdir(d) for d in directories.values())  # SIGKILL: nothing ran
        mine = _dask_security.PrivateCluster()
        try:
            assert not os.path.exists(directories["kill"]), "an abandoned directory is left"
            assert os.path.isdir(directories["live"]), "a live owner's directory was removed"
        finally:
            mine.close()
        assert not os.path.exists(mine.directory)
    finally:
        for process in owners.values():
            _stop(process)
    assert not os.path.exists(directories["live"])  # its owner exited: removed at exit


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Optional[str], bytes]:
    """A TLS session over a socket pair: (the server's error, what the client received)."""
    server_end, client_end = socket.socketpair()
    server_error: list[str] = []

    def serve() -> None:
        try:
            with server.wrap_socket(server_end, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            server_error.append(repr(exc))
            server_end.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_end) as tls:
            received = tls.recv(2)
    except (ssl.SSLError, OSError):
        received = b""
    finally:
        client_end.close()
        thread.join(10)
    return (server_error[0] if server_error else None), received


@pytest.mark.parametrize("memory_files", [True, False], ids=["memory-files", "dask-fallback"])
def test_temporary_credentials_admit_holders_only(
    distributed: Any, memory_files: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of holding the key (and a copy as a worker unpickles it) do mutual TLS."""
    pytest.importorskip("cryptography")
    from poolkit._dask import credentials as _dask_credentials
    from poolkit._dask.credentials import MemorySecurity

    if not memory_files:
        monkeypatch.setattr(_dask_credentials, "memory_files_work", lambda: False)
    security = _dask_credentials.temporary_security()
    assert isinstance(security, MemorySecurity) is memory_files
    worker_copy = pickle.loads(pickle.dumps(security))
    try:
        listen = worker_copy.get_listen_args("worker")["ssl_context"]
        connect = security.get_connection_args("client")["ssl_context"]
        assert _handshake(listen, connect) == (None, b"ok")
        stranger = distributed.security.Security.temporary()
        intruder = stranger.get_connection_args("client")["ssl_context"]
        intruder.check_hostname = False
        intruder.verify_mode = ssl.CERT_NONE  # trusts the server: only the server can refuse
        error, received = _handshake(listen, intruder)
        assert error is not None and received == b""
        anyone = ssl.create_default_context()
        anyone.check_hostname = False
        anyone.verify_mode = ssl.CERT_NONE  # no certificate at all
        error, received = _handshake(listen, anyone)
        assert error is not None and received == b""
    finally:
        for held in (security, worker_copy):
            if isinstance(held, MemorySecurity):
                held.close()


def test_closed_credentials_never_read_a_reused_descriptor(distributed: Any) -> None:
    pytest.importorskip("cryptography")
    from poolkit._dask.credentials import temporary_security

    security = temporary_security()
    paths = {security.tls_client_cert, security.tls_client_key}
    security.close()
    # Its descriptor numbers now belong to whatever opens a file next; it reads none of them.
    assert paths.isdisjoint({security.tls_client_cert, security.tls_client_key})
    with pytest.raises(ssl.SSLError):
        security.get_connection_args("client")


def test_missing_cryptography_names_the_extra(
    distributed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(ImportError, match=r"cryptography.*pip install 'poolkit\[dask\]'"):
        poolkit.Executor(backend="dask", max_workers=1)


# ------------------------------------------------------ a cluster the user brings


def test_plain_tcp_address_warns_once(plain_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dask_security, "_warned", set())
    with pytest.warns(_dask_security.InsecureClusterWarning, match="plain TCP") as record:
        poolkit.Executor(backend="dask", address=plain_cluster).shutdown()
    assert len(record) == 1 and record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", _dask_security.InsecureClusterWarning)
        poolkit.Executor(backend="dask", address=plain_cluster).shutdown()  # once
    # Without a scheme dask speaks TCP too.
    with pytest.warns(_dask_security.InsecureClusterWarning):
        poolkit.Executor(backend="dask", address=_location(plain_cluster)).shutdown()
    # Without sys._getframe the warning points one level up (still a warning).
    monkeypatch.setattr(_dask_security, "sys", types.SimpleNamespace())
    assert _dask_security._caller_stacklevel() == 2


def test_security_is_passed_through_with_address(own: DaskExecutor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", _dask_security.InsecureClusterWarning)
        with poolkit.Executor(
            backend="dask", address=own.address, security=own.cluster.security
        ) as ex:
            assert ex.address == own.address
            assert ex.submit(pow, 2, 5).result(timeout=30) == 32
    # No credentials: refused before distributed.Client is even made.
    with pytest.raises(ValueError, match="speaks TLS: pass security="):
        poolkit.Executor(backend="dask", address=own.address)


def test_security_goes_with_address_only(distributed: Any) -> None:
    with pytest.raises(ValueError, match="security= goes with address="):
        poolkit.Executor(backend="dask", security=object())
    with pytest.raises(ValueError, match="security= goes with address="):
        poolkit.Executor(backend="dask", client=object(), security=object())


def test_the_warning_is_public() -> None:
    import poolkit

    assert poolkit.InsecureClusterWarning is _dask_security.InsecureClusterWarning
    assert "InsecureClusterWarning" in poolkit.__all__
