"""Who may do what on a station: peers, roles, and the rule for where a station may listen.

Three kinds of peer (the trust model of docs/protocol.md):

- **unauthenticated**: with CURVE on, cannot complete the handshake and is never heard. Without
  CURVE the station listens on loopback (or IPC) only, so every local process is trusted as an
  operator: the host's own users are the boundary.
- **client** (a key in ``authorized_clients/``): everything needed to run a robot: hello, lease,
  step control, e-stop, uploads, jobs (cancelling only its own), episodes.
- **operator** (a key in ``operators/``): also clears an e-stop and cancels anyone's job.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

CLIENT = "client"
OPERATOR = "operator"
# Operations only an operator may perform (job_cancel checks ownership in its handler).
OPERATOR_OPS = frozenset({"estop_clear"})

INSECURE_FLAG = "--insecure-allow-unauthenticated-network"


@dataclass(frozen=True)
class Peer:
    """The sender of a request: its ZMQ routing id and, with CURVE, its public key (z85)."""

    routing_id: bytes
    key: str | None
    role: str

    @property
    def identity(self) -> tuple[bytes, str | None]:
        return (self.routing_id, self.key)

    def describe(self) -> str:
        return f"key {self.key[:8]}..." if self.key else "a local peer"


LOCAL_PEER = Peer(b"", None, OPERATOR)  # in-process callers (tests of the station logic)


class AccessError(PermissionError):
    pass


def require_role(peer: Peer, op: str) -> None:
    if op in OPERATOR_OPS and peer.role != OPERATOR:
        raise AccessError(f"{op} needs an operator key ({peer.describe()} is a client)")


def is_local_endpoint(bind: str) -> bool:
    """True for loopback TCP, IPC and in-process endpoints: only this host can reach them."""
    transport, sep, rest = bind.partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a hostname
        return False


def check_bind(bind: str, authenticated: bool, allow_unauthenticated_network: bool) -> None:
    """Refuse to serve an unauthenticated station beyond this host unless told so explicitly."""
    if authenticated or allow_unauthenticated_network or is_local_endpoint(bind):
        return
    raise ValueError(
        f"refusing to bind {bind} without authentication: anyone on that network could drive the "
        "arm. Pass --keys DIR (make keys with `gymnast station keys DIR`), bind tcp://127.0.0.1, "
        f"or, knowing the risk, pass {INSECURE_FLAG}"
    )
