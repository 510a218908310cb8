"""Which process a hold belongs to, and when another process may take its holds back.

A hold's process is known by its lease (`instances.lease_until`, renewed a few times per
lease): once it lapses, any running instance on any host sweeps the holds. Process ids
speed this up only where they mean something: the same kernel (its boot id) and the same
pid namespace (a container has its own), recorded as the instance's host key. Another
host's pid, or a container's seen from beside it, is never looked at.
"""

from __future__ import annotations

import functools
import os
import socket


@functools.cache
def host_key() -> str:
    """This process's host and pid namespace, as instances.hostname records it."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            parts.append(f"boot={boot.read().strip()}")
        parts.append(f"pidns={os.stat('/proc/self/ns/pid').st_ino}")
    except OSError:
        # No /proc (not Linux): the host name alone, as before; leases still decide.
        pass
    return " ".join(parts)


def process_alive(pid: int) -> bool:
    """Whether `pid` names a live process in our pid namespace (a zombie is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
