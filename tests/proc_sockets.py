"""What a process holds open, read from /proc: its descriptors and the sockets behind them."""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple, Optional

#: /proc/net tables of sockets reachable over the network (or by raw access to it).
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6")
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


class Socket(NamedTuple):
    """One socket: ``kind`` is the /proc/net table it is in ("tcp", "unix", ...)."""

    kind: str
    #: inet: "ip:port" of the local end; unix: the bound path, "@name" if abstract, or "".
    local: str
    listening: bool


def _inet_address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
    else:  # four little-endian 32-bit words
        words = struct.unpack("<4I", raw)
        ip = socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))
    return f"{ip}:{int(port, 16)}"


def socket_table() -> dict[int, Socket]:
    """Every socket of this network namespace, by inode."""
    table: dict[int, Socket] = {}
    for kind in _INET_TABLES:
        try:
            with open(f"/proc/net/{kind}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            listening = kind.startswith("tcp") and fields[3] == _TCP_LISTEN
            table[int(fields[9])] = Socket(kind, _inet_address(fields[1]), listening)
    with open("/proc/net/unix") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            path = fields[7] if len(fields) > 7 else ""
            # Flags __SO_ACCEPTCON (0x10000): the socket listens.
            table[int(fields[6])] = Socket("unix", path, bool(int(fields[3], 16) & 0x10000))
    for kind in ("netlink", "packet"):
        try:
            with open(f"/proc/net/{kind}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        column = -1 if kind == "netlink" else 8
        for row in rows:
            table[int(row.split()[column])] = Socket(kind, "", False)
    return table


def descriptors(pid: int) -> dict[int, str]:
    """fd -> what ``/proc/PID/fd/FD`` links to ("pipe:[...]", "socket:[...]", a path...)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
    return found


def socket_inode(target: str) -> Optional[int]:
    """The inode of a descriptor's link target if it is a socket, else None."""
    if target.startswith("socket:[") and target.endswith("]"):
        return int(target[len("socket:[") : -1])
    return None


def listening_tcp_ports(pids: set[int]) -> set[int]:
    """The TCP ports these processes listen on."""
    table = socket_table()
    ports = set()
    for pid in pids:
        try:
            targets = descriptors(pid).values()
        except OSError:
            continue
        for target in targets:
            inode = socket_inode(target)
            entry = table.get(inode) if inode is not None else None
            if entry is not None and entry.kind.startswith("tcp") and entry.listening:
                ports.add(int(entry.local.rsplit(":", 1)[1]))
    return ports
