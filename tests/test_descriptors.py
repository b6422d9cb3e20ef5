"""Nothing of a running local pool is reachable by another user of the machine.

A pool's transport (task and result pipes, the side socket pairs that carry memory files,
the memory files themselves, the fork template's socket pair, the forkserver's) must be
anonymous, or owner-only where it has a name. The audit lists every descriptor of every
process involved, the parent's new ones and all of the workers', the fork template's, the
forkserver's and the resource tracker's, and every shared-memory mapping, and fails on
anything else: a TCP/UDP/raw socket (listening or not), an abstract Unix socket (the
abstract namespace has no permissions), a named socket, FIFO or file another user could
open.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tasks
from conftest import _infrastructure, descendants
from fifo import Gate
from proc_sockets import Socket, descriptors, socket_inode, socket_table

import poolkit
from poolkit import WorkerCrashedError

BIG = 4 << 20  # large enough to travel in a memory file, not through the pipe
#: Link targets that are anonymous by nature: pipes, and eventfd/epoll/pidfd/signalfd...
ANONYMOUS_PREFIXES = ("pipe:[", "anon_inode:")


def _owner_only(path: str) -> bool:
    """Whether no other user can reach ``path``: it, or a directory above it, is ours with
    no group or other permissions (a 0700 directory hides everything below it)."""
    me = os.geteuid()
    current = Path(path)
    for candidate in (current, *current.parents):
        try:
            info = os.stat(candidate)
        except OSError:
            return False  # gone or unreadable: cannot vouch for it
        if info.st_uid == me and stat.S_IMODE(info.st_mode) & 0o077 == 0:
            return True
    return False


def _socket_problem(entry: Socket | None) -> str | None:
    if entry is None:
        return "a socket in no table of this network namespace"
    if entry.kind != "unix":
        state = " (listening)" if entry.listening else ""
        return f"a {entry.kind} socket at {entry.local}{state}"
    if entry.local == "":
        return None  # unnamed: a socket pair, or the client end of a connection
    if entry.local.startswith("@"):
        return f"an abstract Unix socket {entry.local}: any local user can connect"
    if not _owner_only(entry.local):
        return f"a Unix socket at {entry.local} that other users can reach"
    return None


def _descriptor_problem(target: str, sockets: dict[int, Socket]) -> str | None:
    """Why a descriptor (its /proc link target) is reachable by others, or None."""
    if target.startswith(ANONYMOUS_PREFIXES):
        return None
    inode = socket_inode(target)
    if inode is not None:
        return _socket_problem(sockets.get(inode))
    if target.startswith("/memfd:") and target.endswith("(deleted)"):
        return None  # an anonymous memory file
    if target.endswith(" (deleted)"):
        return None  # unlinked: no name left to open it by
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return f"{target}: not a path this test can check"
    if stat.S_ISCHR(mode):
        return None  # /dev/null, the terminal: devices, not a channel of the pool
    if _owner_only(target):
        return None
    return f"{target}: a file or FIFO other users can open"


def _read_by_python(target: str) -> bool:
    """A file an interpreter opens while it starts or imports: code, not a channel."""
    return target.endswith((".py", ".pyc", ".pth")) or target.startswith(
        (sys.prefix + os.sep, sys.base_prefix + os.sep)
    )


def maps_of(pid: int) -> str:
    """The process's memory mappings (/proc/PID/maps), or "" if it exited meanwhile."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()
    except OSError:
        return ""


def _mapping_problems(pid: int, maps: str) -> list[str]:
    """Shared memory mapped by name (/dev/shm) that other users could open too."""
    problems = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].strip() if len(fields) > 5 else ""
        shared = path.startswith("/dev/shm/") and not path.endswith("(deleted)")
        if shared and not _owner_only(path):
            problems.append(f"pid {pid} maps {path}, which other users can open")
    return problems


def audit(processes: dict[int, dict[int, str]], maps: dict[int, str] | None = None) -> list[str]:
    """Every descriptor ({pid: {fd: link target}}) or mapping ({pid: maps}) of these
    processes that another user could reach."""
    sockets = socket_table()
    problems = []
    for pid, fds in processes.items():
        for fd, target in sorted(fds.items()):
            problem = _descriptor_problem(target, sockets)
            if problem is not None:
                problems.append(f"pid {pid} fd {fd}: {problem}")
    for pid, text in (maps or {}).items():
        problems.extend(_mapping_problems(pid, text))
    return problems


def _exercise(ex: poolkit.Executor) -> tuple[set[int], object]:
    """Use every channel of the pool once (memory files both ways, map, a crash and its
    replacement); return the pids of the workers seen, and a large result to keep."""
    argument = pickle.PickleBuffer(bytearray(BIG))
    assert ex.submit(tasks.in_memory_file, argument).result(timeout=30) is True
    assert len(ex.submit(tasks.make_bytes, BIG).result(timeout=30)) == BIG
    assert list(ex.map(tasks.square, range(50), chunksize=5)) == [i * i for i in range(50)]
    with pytest.raises(WorkerCrashedError):
        ex.submit(tasks.kill_self, signal.SIGKILL).result(timeout=30)
    kept = ex.submit(tasks.make_buffer, BIG).result(timeout=30)  # mapped here while kept
    return {f.result(timeout=30) for f in [ex.submit(tasks.getpid) for _ in range(8)]}, kept


def test_every_descriptor_of_a_running_pool_is_private(start_method: str, tmp_path: Path) -> None:
    parent_before = descriptors(os.getpid())
    with poolkit.Executor(max_workers=2, start_method=start_method) as ex:
        workers, kept = _exercise(ex)
        # Look while a task runs and its large argument is in its worker.
        gate = Gate(tmp_path)
        running = ex.submit(tasks.signal_and_wait, *gate.args, pickle.PickleBuffer(b"r" * BIG))
        workers.add(gate.wait_started())
        parent_now = descriptors(os.getpid())
        processes = {
            os.getpid(): {fd: t for fd, t in parent_now.items() if parent_before.get(fd) != t}
        }
        others = descendants(os.getpid())
        # Not the pool's: what the test process held before the pool (its stdout, pytest's
        # capture files), which a forked process inherits, and what an interpreter reads
        # at the instant of the listing (a spawned worker's start-up reads .pth files, a
        # fork server's import a .pyc).
        users_own = set(parent_before.values())
        for pid in others:
            try:
                processes[pid] = {
                    fd: t
                    for fd, t in descriptors(pid).items()
                    if t not in users_own and not _read_by_python(t)
                }
            except OSError:
                continue  # a process that exited meanwhile (a replaced worker)
        mapped = {pid: maps_of(pid) for pid in processes}
        problems = audit(processes, mapped)
        gate.open()
        assert bytes(running.result(timeout=30)) == b"r" * BIG
        assert len(memoryview(kept)) == BIG  # type: ignore[arg-type]
    assert not problems, "\n".join(problems)
    # The audit saw what it is meant to see: the workers, and the processes they come from.
    assert workers <= processes.keys()
    helpers = others - workers
    if start_method == "forkserver":
        assert _infrastructure() & helpers, "the forkserver was not audited"
    if start_method == "fork":
        from poolkit._start_methods.fork import supported

        if supported():  # the template: a helper that is no multiprocessing infrastructure
            assert helpers - _infrastructure(), "the fork template was not audited"
    # Memory files and socket pairs were in use, so the audit looked at them.
    kinds = {t.split(":")[0] for fds in processes.values() for t in fds.values()}
    assert {"pipe", "socket", "/memfd"} <= kinds, kinds
    assert any("/memfd:poolkit-buffer" in m for m in mapped.values()), "no memory file seen"


# ------------------------------------------------- and as another user would try

_CONNECT_AS_NOBODY = """
import json, os, socket, sys
paths = json.loads(sys.argv[1])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
outcomes = {}
for path in paths:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path.replace("@", "\\0", 1) if path.startswith("@") else path)
        outcomes[path] = "connected"
    except OSError as exc:
        outcomes[path] = exc.strerror or repr(exc)
    finally:
        sock.close()
print(json.dumps(outcomes))
"""


def _connect_as_nobody(paths: list[str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _CONNECT_AS_NOBODY, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    outcomes: dict[str, str] = json.loads(done.stdout)
    return outcomes


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid needs root")
def test_another_user_cannot_connect_to_any_named_socket_of_a_pool(
    start_method: str, open_dir: Path
) -> None:
    with poolkit.Executor(max_workers=2, start_method=start_method) as ex:
        _exercise(ex)
        sockets = socket_table()
        named = set()
        for pid in {os.getpid(), *descendants(os.getpid())}:
            try:
                targets = descriptors(pid).values()
            except OSError:
                continue
            for target in targets:
                inode = socket_inode(target)
                entry = sockets.get(inode) if inode is not None else None
                if entry is not None and entry.kind == "unix" and entry.listening:
                    named.add(entry.local)
        # The control: a socket anyone may connect to, which nobody does reach.
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(open_dir / "control.sock"))
        os.chmod(open_dir / "control.sock", 0o777)
        control.listen()
        try:
            outcomes = _connect_as_nobody([*sorted(named - {""}), str(open_dir / "control.sock")])
        finally:
            control.close()
    assert outcomes.pop(str(open_dir / "control.sock")) == "connected"
    assert "connected" not in outcomes.values(), outcomes
    if start_method == "forkserver":  # multiprocessing's forkserver listens on a path
        assert outcomes and set(outcomes.values()) == {"Permission denied"}, outcomes


# --------------------------------------------------- the audit is able to fail


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's own tmp_path is below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="poolkit-audit-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def sockets_under_test(open_dir: Path, tmp_path: Path) -> Iterator[dict[str, object]]:
    """What the audit must reject, and what it must accept, opened in this process."""
    made: dict[str, object] = {}
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    made["tcp listen"] = tcp
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    made["udp"] = udp
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0poolkit-test-{os.getpid()}")
    made["abstract"] = abstract
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(str(open_dir / "open.sock"))
    os.chmod(open_dir / "open.sock", 0o777)
    made["named, open to all"] = named
    private_dir = tmp_path / "private"
    private_dir.mkdir(mode=0o700)
    private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    private.bind(str(private_dir / "mine.sock"))
    made["named, in a 0700 directory"] = private
    made["socket pair"] = socket.socketpair()
    yield made
    for value in made.values():
        for sock in value if isinstance(value, tuple) else (value,):
            sock.close()


def test_the_audit_rejects_what_others_can_reach(
    sockets_under_test: dict[str, object], open_dir: Path, tmp_path: Path
) -> None:
    def fds_of(value: object) -> dict[int, str]:
        socks = value if isinstance(value, tuple) else (value,)
        return {s.fileno(): os.readlink(f"/proc/self/fd/{s.fileno()}") for s in socks}

    verdicts = {
        name: audit({os.getpid(): fds_of(value)}) for name, value in sockets_under_test.items()
    }
    assert "tcp socket at 127.0.0.1:" in verdicts["tcp listen"][0]
    assert "(listening)" in verdicts["tcp listen"][0]
    assert "udp socket" in verdicts["udp"][0]
    assert "abstract Unix socket" in verdicts["abstract"][0]
    assert "other users can reach" in verdicts["named, open to all"][0]
    assert verdicts["named, in a 0700 directory"] == []
    assert verdicts["socket pair"] == []
    # Files: one others can open is reported, an unlinked one or one in a 0700 dir is not.
    readable = open_dir / "readable"
    readable.write_bytes(b"x")
    readable.chmod(0o644)
    with open(readable, "rb") as f:
        assert audit({os.getpid(): {f.fileno(): str(readable)}})
    hidden = tmp_path / "private" / "hidden"  # below pytest's 0700 directory
    hidden.write_bytes(b"x")
    assert not audit({os.getpid(): {99: str(hidden)}})
    assert not audit({os.getpid(): {99: "/tmp/gone (deleted)", 98: "pipe:[1]"}})
