"""CURVE authentication for the station: key generation and socket set-up.

Layout of a keys directory (``gymnast station keys DIR`` makes it):

    DIR/server.key, DIR/server.key_secret            the station's keypair
    DIR/client.key, DIR/client.key_secret            one client keypair (copy to the GPU machine)
    DIR/authorized_clients/*.key                     public keys the station accepts

The secret files stay on their own machine; only ``server.key`` and a client's ``*.key_secret``
are needed by a client.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class AuthConfigError(ValueError):
    pass


def create_keys(keys_dir: str | Path, client_name: str = "client") -> dict[str, Path]:
    d = Path(keys_dir)
    (d / "authorized_clients").mkdir(parents=True, exist_ok=True)
    server_public, server_secret = zmq.auth.create_certificates(d, "server")
    client_public, client_secret = zmq.auth.create_certificates(d, client_name)
    shutil.copy(client_public, d / "authorized_clients" / Path(client_public).name)
    for secret in (server_secret, client_secret):
        Path(secret).chmod(0o600)
    return {
        "server_public": Path(server_public),
        "server_secret": Path(server_secret),
        "client_public": Path(client_public),
        "client_secret": Path(client_secret),
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


def configure_server(
    ctx: zmq.Context, sock: zmq.Socket, keys_dir: str | Path
) -> ThreadAuthenticator:
    d = Path(keys_dir)
    public, secret = _load(d / "server.key_secret", want_secret=True)
    allowed = d / "authorized_clients"
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise AuthConfigError(f"{allowed} holds no client public keys; no client could connect")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True
    return auth


def configure_client(
    sock: zmq.Socket, server_public_key: str | Path, client_secret_key: str | Path
) -> None:
    server_public, _ = _load(Path(server_public_key), want_secret=False)
    public, secret = _load(Path(client_secret_key), want_secret=True)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public
