"""Test hosts on a private network: one network namespace per host, each joined to a bridge (in a
namespace of its own) by a veth pair, with an address on a private subnet; a process started on a
host also gets a UTS namespace, so it has that host's own hostname.

Nothing is added to this machine's own network: the bridge and every host live in namespaces the
test creates (``ip netns add``, named with a prefix unique to the run) and deletes after. A
partition is real packet filtering on one host (iptables rules in its namespace), as a host's
firewall or a cut cable would act. Needs root, ``ip`` (iproute2), ``unshare`` and ``iptables``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

SUBNET = "10.213.0"  # a /24 inside the run's own namespaces only

TOOLS = ("ip", "unshare", "iptables")


def missing_tools() -> str:
    """Why hosts cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"needs {', '.join(absent)} (apt-get install -y iproute2 util-linux iptables)"
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Hosts:
    """Named hosts (name -> address) on one bridge; ``prefix`` names this run's namespaces."""

    prefix: str
    addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    def plan(cls, prefix: str, names: list[str]) -> Hosts:
        return cls(prefix, {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(names)})

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def create(self) -> None:
        """The bridge namespace, then each host: its namespace, a veth pair, its address."""
        bridge = self.ns("bridge")
        _ip("netns", "add", bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i, (name, address) in enumerate(self.addresses.items()):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip(
                "-n",
                bridge,
                "link",
                "add",
                f"v{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", bridge, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def delete(self) -> None:
        """Every namespace of this run (their veths go with them)."""
        for name in [*self.addresses, "bridge"]:
            subprocess.run(
                ["ip", "netns", "del", self.ns(name)], capture_output=True, timeout=30, check=False
            )

    def on(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run on host ``name``: in its network namespace, with its hostname. The exec
        chain keeps one PID, so the process is stopped by the PID its starter holds."""
        return [
            "ip",
            "netns",
            "exec",
            self.ns(name),
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            name,
            *argv,
        ]

    def name_of(self, address: str) -> str:
        return next(n for n, a in self.addresses.items() if a == address)

    def cut(self, name: str, peer: str, action: str) -> None:
        """``action`` -A (add) or -D (delete) the rules on host ``name`` that drop every packet
        from and to host ``peer``: ``name`` stays reachable from every other host."""
        ns, address = self.ns(name), self.addresses[peer]
        for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
            subprocess.run(
                ["ip", "netns", "exec", ns, "iptables", action, chain, side, address, "-j", "DROP"],
                check=True,
                capture_output=True,
                timeout=30,
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Hosts:
        return cls(**json.loads(text))

    def __str__(self) -> str:
        return (
            " ".join(f"{n}={a}" for n, a in self.addresses.items())
            + f" ({shlex.quote(self.prefix)})"
        )
