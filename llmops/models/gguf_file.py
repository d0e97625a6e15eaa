"""An opened GGUF file: a validated header, typed metadata access and the tensor list.

GGUF (v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, metadata count u64,
metadata key/value pairs, tensor infos (name, dims in ggml `ne` order, type, offset), then
the tensor data, aligned to `general.alignment` (default 32). Parsed here with `struct`
rather than gguf.GGUFReader, which builds a numpy view per vocabulary string and takes
seconds on a 50k-token vocabulary; dequantization still goes through gguf.quants.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4
_MISSING = object()
# GGUF metadata value type -> struct format of one scalar (8: string, 9: array are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's description plus a zero-copy view of its bytes."""

    name: str
    tensor_type: GGMLQuantizationType
    dims: tuple[int, ...]        # ggml `ne` order: fastest-varying dimension first
    data: np.ndarray             # uint8 bytes, shaped (*outer dims, bytes per row)

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy (row-major) shape: the dims reversed."""
        return tuple(reversed(self.dims))


class GGUFFile:
    """Read-only view of one GGUF file; every malformed input surfaces as ValueError."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        if self.path.stat().st_size < 24:
            raise ValueError(f"{self.path} is not a valid GGUF file: only {self.path.stat().st_size} bytes")
        self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self._bytes)  # cheap slicing for the many small metadata reads
        self._pos = 0
        try:
            self.metadata, self.tensors = self._parse()
        except (struct.error, UnicodeDecodeError, IndexError, OverflowError) as exc:
            raise ValueError(f"{self.path} is not a valid GGUF file: {exc}") from exc

    @property
    def architecture(self) -> str:
        return self.require("general.architecture", str)

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key` (str, int, float, bool or list), or `default`."""
        return self.metadata.get(key, default)

    def require(self, key: str, kind: type | tuple[type, ...] = object) -> Any:
        """The value under `key`; ValueError when it is missing or not of `kind`."""
        value = self.metadata.get(key, _MISSING)
        if value is _MISSING:
            raise ValueError(f"{self.path}: required metadata key {key!r} is missing")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise ValueError(f"{self.path}: metadata key {key!r} has the wrong type: {value!r}")
        return value

    def tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def _parse(self) -> tuple[dict[str, Any], list[GGUFTensor]]:
        if bytes(self._buf[:4]) != _MAGIC:
            raise ValueError(f"{self.path} is not a valid GGUF file: bad magic {bytes(self._buf[:4])!r}")
        self._pos = 4
        version, n_tensors, n_kv = self._unpack("<I"), self._unpack("<Q"), self._unpack("<Q")
        if version not in _VERSIONS:
            raise ValueError(f"{self.path} is not a valid GGUF file: unsupported version {version}"
                             f" (big-endian or too old/new; supported: {_VERSIONS})")
        metadata = {}
        for _ in range(n_kv):
            key = self._string()
            metadata[key] = self._value(self._unpack("<I"), key)
        infos = [self._tensor_info() for _ in range(n_tensors)]
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"{self.path}: general.alignment {alignment!r} must be a power of two")
        start = -(-self._pos // alignment) * alignment
        return metadata, [self._tensor(start, *info) for info in infos]

    def _unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += size
        return value

    def _need(self, size: int) -> None:
        if self._pos + size > len(self._bytes):
            raise ValueError(f"{self.path} is truncated: needs {size} bytes at offset {self._pos}")

    def _string(self) -> str:
        size = self._unpack("<Q")
        self._need(size)
        text = str(self._buf[self._pos:self._pos + size], "utf-8")
        self._pos += size
        return text

    def _value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self._unpack("<" + _SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            raise ValueError(f"{self.path}: metadata key {key!r} has unknown value type {kind}")
        item, count = self._unpack("<I"), self._unpack("<Q")
        if item in _SCALARS:  # numeric arrays in one go
            dtype = np.dtype("<" + _SCALARS[item])
            self._need(count * dtype.itemsize)
            values = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos)
            self._pos += count * dtype.itemsize
            return values.tolist()
        return [self._value(item, key) for _ in range(count)]

    def _tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        n_dims = self._unpack("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise ValueError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
        dims = tuple(self._unpack("<Q") for _ in range(n_dims))
        if min(dims) < 1:
            raise ValueError(f"{self.path}: tensor {name!r} has an empty dimension {dims}")
        return name, dims, self._unpack("<I"), self._unpack("<Q")

    def _tensor(self, start: int, name: str, dims: tuple[int, ...], type_id: int, offset: int) -> GGUFTensor:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            qtype = None
        if qtype not in GGML_QUANT_SIZES:
            raise ValueError(f"tensor {name!r} has type id {type_id}, which is unknown")
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if dims[0] % block_size:
            raise ValueError(f"tensor {name!r}: row length {dims[0]} is not a multiple of the {qtype.name} block")
        row_bytes = dims[0] // block_size * type_size
        n_bytes = row_bytes * math.prod(dims[1:])
        begin = start + offset
        if begin + n_bytes > len(self._bytes):
            raise ValueError(f"{self.path} is truncated: tensor {name!r} extends past the end of the file")
        data = self._bytes[begin:begin + n_bytes].view(np.ndarray).reshape(*reversed(dims[1:]), row_bytes)
        return GGUFTensor(name, qtype, dims, data)


@functools.lru_cache(maxsize=None)
def can_dequantize(qtype: GGMLQuantizationType) -> bool:
    """Whether the gguf package can turn tensors of `qtype` into float32 (probed on one block)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True


def dequantize_tensor(tensor: GGUFTensor) -> np.ndarray:
    """The tensor as a contiguous float32 array in numpy (row-major) shape."""
    if not can_dequantize(tensor.tensor_type):
        raise ValueError(f"tensor {tensor.name!r} has type {tensor.tensor_type.name}, which cannot be dequantized")
    values = dequantize(tensor.data, tensor.tensor_type)
    return np.ascontiguousarray(values.reshape(tensor.shape), dtype=np.float32)
