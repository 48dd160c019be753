"""json-numpy's wire format with the standard library and numpy only.

AutoEval policy servers and clients exchange numpy arrays as JSON objects in the format of the
``json-numpy`` package (``json_numpy.patch()``)::

    {"__numpy__": "<base64 of the C-order bytes>", "dtype": "<f4", "shape": [7]}

``dtype`` is numpy's array-protocol type string (``numpy.lib.format.dtype_to_descr``: ``"|u1"``,
``"<f4"``, ...); an empty ``shape`` is a numpy scalar. This module writes exactly that and reads
it back, so a peer using the package and one using this module understand each other.

Decoding is for data from the network: only plain numeric and boolean dtypes are accepted (never
``object``, structured or void dtypes), and the byte count must match dtype and shape, so a bad
payload raises ``ValueError`` instead of producing a surprising array.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import numpy as np

# bool, signed and unsigned ints, floats, complex: what an image, a state or an action can be.
DECODABLE_KINDS = frozenset("biufc")
MAX_NDIM = 32


def _encode_array(o: np.ndarray | np.generic) -> dict:
    arr = np.asarray(o)
    if arr.dtype.kind not in DECODABLE_KINDS:
        raise TypeError(f"json-numpy encoding supports numeric arrays only, got dtype {arr.dtype}")
    return {
        "__numpy__": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii"),
        "dtype": arr.dtype.str,  # == numpy.lib.format.dtype_to_descr for plain dtypes
        "shape": list(arr.shape),
    }


def default(o: Any) -> dict:
    """``json.dumps(..., default=default)`` hook: numpy arrays and scalars as json-numpy objects."""
    if isinstance(o, (np.ndarray, np.generic)):
        return _encode_array(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def decode_array(dct: dict) -> np.ndarray | np.generic:
    """One json-numpy object to a (writable) array, or a numpy scalar for an empty shape."""
    raw, descr, shape = dct.get("__numpy__"), dct.get("dtype"), dct.get("shape")
    if not isinstance(raw, str):
        raise ValueError("json-numpy object: '__numpy__' must be a base64 string")
    if not isinstance(descr, str):
        raise ValueError(
            f"json-numpy object: 'dtype' must be a type string like '<f4', got {descr!r}"
        )
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise ValueError(f"json-numpy object: unknown dtype {descr!r}") from None
    if dtype.kind not in DECODABLE_KINDS or dtype.fields is not None:
        raise ValueError(f"json-numpy object: dtype {descr!r} is not a plain numeric dtype")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ValueError(
            f"json-numpy object: 'shape' must be a list of non-negative ints, got {shape!r}"
        )
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("json-numpy object: '__numpy__' is not valid base64") from None
    count = math.prod(shape) if shape else 1
    if len(data) != count * dtype.itemsize:
        raise ValueError(
            f"json-numpy object: {len(data)} bytes do not hold shape {shape} of dtype {descr} "
            f"({count * dtype.itemsize} bytes)"
        )
    arr = np.frombuffer(data, dtype=dtype).copy()
    return arr.reshape(shape) if shape else arr[0]


def object_hook(dct: dict) -> Any:
    """``json.loads(..., object_hook=object_hook)`` hook: json-numpy objects back to arrays."""
    return decode_array(dct) if "__numpy__" in dct else dct


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes numpy arrays and scalars in json-numpy's format."""
    return json.dumps(obj, default=default, **kwargs)


def loads(s: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` that reads json-numpy objects back as arrays; raises ValueError on bad input."""
    try:
        return json.loads(s, object_hook=object_hook, **kwargs)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
