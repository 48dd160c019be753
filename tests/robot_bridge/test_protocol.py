import msgpack
import numpy as np
import pytest

from robot_bridge import protocol
from robot_bridge.protocol import ProtocolError


def as_bytes(frames):
    return [bytes(memoryview(f)) for f in frames]


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int64", "bool"])
def test_arrays_round_trip_bit_exact(dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((3, 5, 2)) * 100).astype(dtype)
    header, arrays = protocol.decode(
        as_bytes(protocol.request("r1", "step", {"k": [1, 2]}, "L", {"a": arr}))
    )
    assert header == {"v": 1, "id": "r1", "op": "step", "args": {"k": [1, 2]}, "lease": "L"}
    assert arrays["a"].dtype == arr.dtype and arrays["a"].shape == arr.shape
    np.testing.assert_array_equal(arrays["a"], arr)


def test_non_contiguous_arrays_are_sent_contiguous():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)[:, ::2]
    _, arrays = protocol.decode(as_bytes(protocol.encode({"id": "x"}, {"img": img})))
    np.testing.assert_array_equal(arrays["img"], img)


def test_garbage_header_is_rejected_clearly():
    with pytest.raises(ProtocolError) as e:
        protocol.decode([b"\xc1\xff garbage"])
    assert e.value.code == "bad_message" and "msgpack" in e.value.message


def test_header_must_be_a_map():
    with pytest.raises(ProtocolError, match="must be a msgpack map"):
        protocol.decode([msgpack.packb([1, 2, 3])])


def test_truncated_array_frame_is_named():
    frames = as_bytes(protocol.request("r", "step", {}, arrays={"action": np.zeros(7, np.float32)}))
    frames[1] = frames[1][:10]
    with pytest.raises(ProtocolError, match=r"'action'.*needs 28 bytes but the frame has 10"):
        protocol.decode(frames)


def test_missing_frame_is_detected():
    frames = as_bytes(protocol.request("r", "step", {}, arrays={"action": np.zeros(7, np.float32)}))
    with pytest.raises(ProtocolError, match="announces 1 array frame"):
        protocol.decode(frames[:1])


def test_disallowed_dtype_is_refused():
    header = msgpack.packb({"id": "r", "arrays": [["a", "object", [1]]]})
    with pytest.raises(ProtocolError, match="dtype 'object' not allowed"):
        protocol.decode([header, b"\x00" * 8])


def test_oversized_array_is_refused_before_allocation():
    header = msgpack.packb({"id": "r", "arrays": [["a", "uint8", [protocol.MAX_ARRAY_BYTES + 1]]]})
    with pytest.raises(ProtocolError) as e:
        protocol.decode([header, b"\x00"])
    assert e.value.code == "too_large"


def test_field_validation_messages():
    assert protocol.field({"n": 3}, "n", int) == 3
    with pytest.raises(ProtocolError, match="missing field 'task'"):
        protocol.field({}, "task", str)
    with pytest.raises(ProtocolError, match="must be int, got bool"):
        protocol.field({"n": True}, "n", int)
    with pytest.raises(ProtocolError, match="must be 1..10, got 11"):
        protocol.field({"n": 11}, "n", int, check=lambda n: 1 <= n <= 10, what="1..10")
