"""Hosts for the chaos suite: Linux network namespaces on this machine, joined by a bridge.

`Lab` builds one namespace per host (`<tag>-a`, `<tag>-b`, ...), each with a veth pair whose outer
end is a port of the lab's bridge (`<tag>br`) in the root namespace and whose inner end holds the
host's address (10.213.77.x/24, only inside the namespaces: nothing on this machine's own network
changes). A host is partitioned by taking its bridge port down (`tc netem` needs a kernel module
that is not everywhere; a link that is down loses every packet just the same, and TCP connections
survive it, as they survive a real partition).

Names carry a tag with the pytest process's pid (`rc<pid hex><n>`), so a run killed before its
finalizers ran is recognised and removed by the next (`remove_stale`), and two runs at once do not
touch each other's namespaces. Every process a host runs is started with `ip netns exec`; teardown
SIGKILLs whatever is left in each namespace (`ip netns pids`), then deletes the namespaces and links.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.queue.redis_server import die_with_parent

SUBNET = "10.213.77"
TAG_RE = re.compile(r"^rc([0-9a-f]{6})[0-9a-f]")
_counter = itertools.count()


class LabError(RuntimeError):
    """The machine cannot build namespaces (not root, no `ip`, no netns support)."""


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "the chaos suite builds network namespaces: it needs root"
    if shutil.which("ip") is None:
        return "the chaos suite needs iproute2 (`ip`)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines() if line.strip()]


def links() -> list[str]:
    names = []
    for line in ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def ns_pids(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).split()]


def kill_namespace(ns: str) -> None:
    """SIGKILL every process in `ns` (stopped ones too) and wait for them to go."""
    deadline = time.monotonic() + 10
    while (pids := ns_pids(ns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_stale() -> list[str]:
    """Namespaces and links of earlier runs whose pytest process is gone: removed; their names."""
    removed = []
    for ns in namespaces():
        m = TAG_RE.match(ns)
        if m and not _alive(int(m.group(1), 16)):
            kill_namespace(ns)
            ip("netns", "del", ns, check=False)
            removed.append(ns)
    for link in links():
        m = TAG_RE.match(link)
        if m and not _alive(int(m.group(1), 16)):
            ip("link", "del", link, check=False)
            removed.append(link)
    return removed


@dataclass
class Host:
    name: str
    ns: str
    addr: str
    port: str  # the veth end on the bridge (root namespace)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Run `command` inside this host; it dies with pytest (PDEATHSIG survives `ip netns exec`)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.processes.append(proc)
        return proc

    def run(self, command: Sequence[str], timeout: float = 30) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, *command], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise LabError(f"{self.name}: {' '.join(command)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def pids(self) -> list[int]:
        return ns_pids(self.ns)

    def partition(self) -> None:
        ip("link", "set", self.port, "down")

    def heal(self) -> None:
        ip("link", "set", self.port, "up")

    def kill_all(self) -> list[int]:
        """SIGKILL every process of this host at once (a machine that dies); the pids killed."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        return pids


class Lab:
    """Hosts `names` on one bridge; `build()`, then `teardown()` (always: it is a finalizer)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.tag = f"rc{os.getpid():06x}{next(_counter) % 16:x}"
        self.bridge = f"{self.tag}br"
        self.hosts = {
            name: Host(name, f"{self.tag}-{name}", f"{SUBNET}.{i + 1}", f"{self.tag}{name}0")
            for i, name in enumerate(names)
        }

    def build(self) -> Lab:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("link", "set", self.bridge, "up")
        for host in self.hosts.values():
            inner = f"{self.tag}{host.name}1"
            ip("netns", "add", host.ns)
            ip("link", "add", host.port, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", host.ns)
            ip("link", "set", host.port, "master", self.bridge)
            ip("link", "set", host.port, "up")
            ip("-n", host.ns, "link", "set", "lo", "up")
            ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", inner)
            ip("-n", host.ns, "link", "set", inner, "up")
        return self

    def teardown(self) -> None:
        for host in self.hosts.values():
            kill_namespace(host.ns)
            for proc in host.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            ip("netns", "del", host.ns, check=False)
            ip("link", "del", host.port, check=False)
        ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        return [n for n in namespaces() + links() if n.startswith(self.tag)]
