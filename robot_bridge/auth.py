"""CURVE authentication for the station: key generation, roles and socket set-up.

Layout of a keys directory (``gymnast station keys DIR`` makes it):

    DIR/server.key, DIR/server.key_secret            the station's keypair
    DIR/client.key, DIR/client.key_secret            a client keypair (copy to the GPU machine)
    DIR/operator.key, DIR/operator.key_secret        an operator keypair (for the lab's operator)
    DIR/authorized_clients/*.key                     public keys of clients
    DIR/operators/*.key                              public keys of operators (also accepted)

The secret files stay on their own machine; only ``server.key`` and a peer's ``*.key_secret``
are needed by a client. Roles are explained in ``robot_bridge.access``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from robot_bridge.access import CLIENT, OPERATOR


class AuthConfigError(ValueError):
    pass


def create_keys(keys_dir: str | Path, client_name: str = "client") -> dict[str, Path]:
    d = Path(keys_dir)
    for sub in ("authorized_clients", "operators"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    server_public, server_secret = zmq.auth.create_certificates(d, "server")
    client_public, client_secret = zmq.auth.create_certificates(d, client_name)
    operator_public, operator_secret = zmq.auth.create_certificates(d, "operator")
    shutil.copy(client_public, d / "authorized_clients" / Path(client_public).name)
    shutil.copy(operator_public, d / "operators" / Path(operator_public).name)
    for secret in (server_secret, client_secret, operator_secret):
        Path(secret).chmod(0o600)
    return {
        "server_public": Path(server_public),
        "server_secret": Path(server_secret),
        "client_public": Path(client_public),
        "client_secret": Path(client_secret),
        "operator_public": Path(operator_public),
        "operator_secret": Path(operator_secret),
    }


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise AuthConfigError(
            f"key file {path} does not exist (make keys with `gymnast station keys DIR`)"
        )
    public, secret = zmq.auth.load_certificate(path)
    if want_secret and secret is None:
        raise AuthConfigError(f"{path} holds no secret key; pass the *.key_secret file")
    return public, secret


class KeyRing:
    """Public keys the station accepts, each with its role; the ZAP callback of the authenticator."""

    def __init__(self, keys_dir: str | Path) -> None:
        d = Path(keys_dir)
        self.roles: dict[str, str] = {}
        for sub, role in (("authorized_clients", CLIENT), ("operators", OPERATOR)):
            for path in sorted((d / sub).glob("*.key")) if (d / sub).is_dir() else []:
                public, _ = zmq.auth.load_certificate(path)
                # an operator key listed among the clients too stays an operator
                if self.roles.get(public.decode()) != OPERATOR:
                    self.roles[public.decode()] = role
        if not self.roles:
            raise AuthConfigError(
                f"{d}/authorized_clients and {d}/operators hold no public keys; no client could connect"
            )

    def callback(self, domain: str, key: bytes) -> bool:
        return key.decode() in self.roles  # pyzmq passes the key z85-encoded

    def role(self, user_id: str | None) -> str | None:
        return self.roles.get(user_id or "")


def configure_server(
    ctx: zmq.Context, sock: zmq.Socket, keys_dir: str | Path
) -> tuple[ThreadAuthenticator, KeyRing]:
    d = Path(keys_dir)
    public, secret = _load(d / "server.key_secret", want_secret=True)
    ring = KeyRing(d)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=ring)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True
    return auth, ring


def configure_client(
    sock: zmq.Socket, server_public_key: str | Path, client_secret_key: str | Path
) -> None:
    server_public, _ = _load(Path(server_public_key), want_secret=False)
    public, secret = _load(Path(client_secret_key), want_secret=True)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public
