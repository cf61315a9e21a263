"""The openpi wire format: msgpack with numpy arrays as tagged maps.

openpi_client.msgpack_numpy (the client robots run) packs an ndarray as the map
``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}`` and a numpy scalar
as ``{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}``. This module reads and writes the
same maps. Written here rather than imported from openpi-client so the server does not depend on a
package that pins numpy<2, and because a server must check what a client sends: the decoder below
refuses object/void/complex dtypes and data whose length does not match the shape, and every
failure is a `WireError` with a message naming what was wrong, never a crash or a silent wrong array.
"""
from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

# Kinds a robot has no reason to send and that numpy could misinterpret from raw bytes.
_REFUSED_KINDS = {"O": "object", "V": "void/structured", "c": "complex"}


class WireError(ValueError):
    """A message that is not valid msgpack-numpy (the text says why)."""


def _encode_default(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise TypeError(f"cannot send a numpy array of dtype {obj.dtype} over the openpi protocol")
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__} over the openpi protocol")


def packb(obj: Any) -> bytes:
    """Python/numpy tree -> bytes that openpi_client.msgpack_numpy.unpackb reads back."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _dtype(raw) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        raise WireError(f"array dtype must be a string like '<f4', got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw)
    except TypeError as e:
        raise WireError(f"unknown array dtype {raw!r}") from e
    if dtype.kind in _REFUSED_KINDS:
        raise WireError(f"array dtype {raw!r} ({_REFUSED_KINDS[dtype.kind]}) is not accepted")
    return dtype


def _decode_hook(obj: dict):
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise WireError(f"array shape must be a list of non-negative ints, got {shape!r}")
        data = obj.get(b"data")
        if not isinstance(data, (bytes, bytearray)):
            raise WireError(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise WireError(f"array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes of "
                            f"data, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise WireError(f"numpy scalar of dtype {dtype.str} could not be built: {e}") from e
    return obj


def unpackb(data: bytes) -> Any:
    """bytes from openpi_client.msgpack_numpy.packb -> tree of Python objects and read-only ndarrays.

    Raises WireError for anything that is not one complete msgpack-numpy message.
    """
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False)
    except WireError:
        raise
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError,
            ValueError, TypeError, UnicodeDecodeError) as e:
        raise WireError(f"message is not valid msgpack: {type(e).__name__}: {e}") from e
