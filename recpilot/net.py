"""Small socket helpers shared by services, benchmarks and tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at this moment (the OS picks it; another process may still
    take it before the caller binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def grpc_target(addresses: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC channel target and options for one ``host:port`` or several, comma-separated
    (the replicas of a service, e.g. ``127.0.0.1:50051,127.0.0.1:50052``): several become one
    channel that spreads its calls round-robin over the addresses that answer (gRPC's own
    ``round_robin`` policy; a replica that goes away is skipped until it is back). Host names of a
    list are resolved to IPv4 addresses once, here."""
    addrs = [a.strip() for a in addresses.split(",") if a.strip()]
    if not addrs:
        raise ValueError(f"no address in {addresses!r}")
    if len(addrs) == 1:
        return addrs[0], []
    resolved = []
    for a in addrs:
        host, sep, port = a.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"{a!r} is not host:port")
        resolved.append(f"{socket.gethostbyname(host)}:{port}")
    return "ipv4:" + ",".join(resolved), [("grpc.lb_policy_name", "round_robin")]


def reachable(addresses: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection opens to any of the comma-separated ``host:port`` addresses (a
    Kafka bootstrap list, say): "something listens there", nothing more."""
    for a in addresses.split(","):
        host, sep, port = a.strip().rpartition(":")
        if not sep or not port.isdigit():
            continue
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except OSError:
            continue
    return False
