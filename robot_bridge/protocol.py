"""The station wire format: a msgpack header followed by raw array frames.

Every message is a ZMQ multipart message ``[header, *frames]``. The header is a msgpack map; its
``arrays`` entry lists ``[name, dtype, shape]`` for each following frame, in order. Arrays travel
as their raw bytes (zero-copy on send, ``np.frombuffer`` on receive): no pickle anywhere, and an
image costs one memcpy at most.

Requests: ``{"v": 1, "id": <request id>, "op": <operation>, "args": {...}, "lease": <token>?}``.
Replies: ``{"v": 1, "id": <request id>, "ok": true, "result": {...}}`` or
``{"v": 1, "id": ..., "ok": false, "error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

PROTOCOL_VERSION = 1

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_DEPTH = 16  # maps and lists nested in a header (requests need 4)
MAX_ARRAY_BYTES = 8 * 1024 * 1024  # a 1920x1080 RGB frame is 6.2 MB
MAX_ARRAYS = 8
MAX_DIM = 2**31  # one array dimension; keeps shape products far from int64 overflow
MAX_REQUEST_ID_CHARS = 64
# The whole message a station accepts: the header and two arrays at their limit. Frames are
# counted and summed as they are read, and a message past either bound is dropped frame by frame
# (nothing of it kept) and answered ``too_large``.
MAX_MESSAGE_FRAMES = 2 + MAX_ARRAYS  # + a REQ peer's empty delimiter
MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + 2 * MAX_ARRAY_BYTES
# Per-frame cap inside libzmq (ZMQ_MAXMSGSIZE): a peer announcing a bigger frame is disconnected
# before anything is allocated. libzmq hands a multipart message over only once its last frame has
# arrived, so one message can hold at most MAX_MESSAGE_FRAMES frames of this size before the
# station refuses it; see docs/protocol.md.
TRANSPORT_MAX_FRAME_BYTES = MAX_MESSAGE_BYTES

ALLOWED_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64", "bool"}
)


class ProtocolError(Exception):
    """A message that cannot be accepted; ``code`` is sent back in the error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def recv_bounded(sock: Any) -> tuple[bytes, list, ProtocolError | None]:
    """Read one message from a ROUTER socket frame by frame: (routing id, frames, refusal).

    Frames past ``MAX_MESSAGE_FRAMES`` or ``MAX_MESSAGE_BYTES`` are read and dropped at once, so
    a refused message leaves nothing behind; ``refusal`` then says which bound it broke.
    """
    routing = sock.recv(copy=False)
    frames: list = []
    count, total, refusal = 0, 0, None
    while sock.getsockopt(zmq.RCVMORE):
        frame = sock.recv(copy=False)
        count, total = count + 1, total + len(frame)
        if refusal is not None:
            continue
        if count > MAX_MESSAGE_FRAMES or total > MAX_MESSAGE_BYTES:
            refusal = ProtocolError(
                "too_large",
                f"message exceeds {MAX_MESSAGE_FRAMES} frames or {MAX_MESSAGE_BYTES} bytes "
                "(a header and at most two arrays at their limit); it was dropped",
            )
            frames = []
            continue
        frames.append(frame)
    return routing.bytes, frames, refusal


def frame_bytes(frame: Any) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame received with copy=False
        return frame.buffer
    return memoryview(frame)


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list:
    """Frames ready for ``socket.send_multipart(frames, copy=False)``."""
    frames: list = [b""]
    specs = []
    for name, arr in (arrays or {}).items():
        a = np.ascontiguousarray(arr)
        specs.append([name, a.dtype.name, list(a.shape)])
        frames.append(a)
    frames[0] = msgpack.packb({**header, "arrays": specs}, use_bin_type=True)
    return frames


def decode(frames: Sequence[Any]) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and validate ``[header, *frames]``; raises ProtocolError naming what is wrong."""
    if not frames:
        raise ProtocolError("bad_message", "empty message")
    head = frame_bytes(frames[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(
            "too_large", f"header is {head.nbytes} bytes; the limit is {MAX_HEADER_BYTES}"
        )
    try:
        header = msgpack.unpackb(
            head, raw=False, strict_map_key=True, max_array_len=4096, max_map_len=1024
        )
    except Exception as e:  # msgpack raises several unrelated exception types
        raise ProtocolError(
            "bad_message", f"header is not valid msgpack: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(header, dict):
        raise ProtocolError(
            "bad_message", f"header must be a msgpack map, got {type(header).__name__}"
        )
    _check_depth(header)
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError("bad_message", f"'arrays' must be a list of at most {MAX_ARRAYS} specs")
    if len(specs) != len(frames) - 1:
        raise ProtocolError(
            "bad_message",
            f"header announces {len(specs)} array frame(s) but {len(frames) - 1} followed (truncated message?)",
        )
    arrays = {}
    for spec, frame in zip(specs, frames[1:], strict=True):
        name, arr = _decode_array(spec, frame_bytes(frame))
        arrays[name] = arr
    return header, arrays


def _check_depth(header: dict) -> None:
    stack = [(header, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_HEADER_DEPTH:
            raise ProtocolError(
                "bad_message", f"header nests deeper than {MAX_HEADER_DEPTH} maps or lists"
            )
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _decode_array(spec: Any, buf: memoryview) -> tuple[str, np.ndarray]:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)):
        raise ProtocolError("bad_message", f"array spec must be [name, dtype, shape], got {spec!r}")
    name, dtype, shape = spec
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError("bad_message", f"array {name!r}: dtype {dtype!r} not allowed")
    if not (
        isinstance(shape, list)
        and len(shape) <= 5
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_DIM for s in shape)
    ):
        raise ProtocolError("bad_message", f"array {name!r}: bad shape {shape!r}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow
    if expected > MAX_ARRAY_BYTES or buf.nbytes > MAX_ARRAY_BYTES:
        raise ProtocolError(
            "too_large",
            f"array {name!r} is {max(expected, buf.nbytes)} bytes; the limit is {MAX_ARRAY_BYTES}",
        )
    if buf.nbytes != expected:
        raise ProtocolError(
            "bad_message",
            f"array {name!r}: {dtype}{shape} needs {expected} bytes but the frame has {buf.nbytes} (truncated?)",
        )
    return name, np.frombuffer(buf, dtype=dtype).reshape(shape)


def ok_reply(
    request_id: Any, result: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> list:
    return encode(
        {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": dict(result)}, arrays
    )


def error_reply(request_id: Any, code: str, message: str) -> list:
    return encode(
        {
            "v": PROTOCOL_VERSION,
            "id": request_id,
            "ok": False,
            "error": {"code": code, "message": message},
        }
    )


def request(
    request_id: str,
    op: str,
    args: Mapping[str, Any],
    lease: str | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> list:
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": dict(args)}
    if lease is not None:
        header["lease"] = lease
    return encode(header, arrays)


# --- field validation for request arguments -------------------------------------------------


def field(
    args: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    *,
    default: Any = ...,
    check: Any = None,
    what: str = "",
) -> Any:
    """Fetch ``args[name]`` checking its type (and an optional predicate); raises bad_request."""
    if name not in args or args[name] is None:
        if default is ...:
            raise ProtocolError("bad_request", f"missing field {name!r}")
        return default
    value = args[name]
    # bool is an int subclass; refuse it where a number is expected.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolError("bad_request", f"field {name!r} must be {_kind_name(kind)}, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(
            "bad_request", f"field {name!r} must be {_kind_name(kind)}, got {type(value).__name__}"
        )
    if check is not None and not check(value):
        raise ProtocolError("bad_request", f"field {name!r} must be {what}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
