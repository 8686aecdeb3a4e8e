"""Reads PyTorch checkpoint pickles (.pth/.pt/.bin) into numpy without importing torch.

Both of torch's formats: the zip archive (`torch.save` since 1.6: `*/data.pkl` + one raw file per
storage) and the legacy stream (magic number, pickled object, storage keys, then each storage as
an int64 element count followed by its bytes — EfficientNet-Lite's weights use it). Like
`torch.load(weights_only=True)`, only tensors, containers and plain values are accepted: any other
global in the pickle is refused by name.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass
class _Storage:
    """A storage named in the pickle; its bytes arrive later (legacy) or from the archive (zip)."""

    key: str
    dtype: np.dtype
    data: np.ndarray | None = None


@dataclasses.dataclass
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if not self.size:
            return flat[self.offset:self.offset + 1].reshape(()).copy()
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.ascontiguousarray(view)


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], source: str):
        super().__init__(file)
        self._storages = storages
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{self._source}: holds {module}.{name}, which is not a tensor or a plain container")

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._source}: unsupported storage {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype)
        return self._storages[key]


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the torch archive, found "
                             f"{len(pickles)}")
        root = pickles[0][:-len("data.pkl")]
        byteorder = archive.read(root + "byteorder").decode() if root + "byteorder" in names \
            else "little"
        if byteorder != "little":
            raise ValueError(f"{path}: big-endian torch archives are not supported")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages, path).load()
        for key, storage in storages.items():
            storage.data = np.frombuffer(archive.read(f"{root}data/{key}"), storage.dtype)
    return obj


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a torch checkpoint (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages, path).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            nbytes = count * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated: storage {key} needs {nbytes} bytes, "
                                 f"{len(raw)} remain")
            storage.data = np.frombuffer(raw, storage.dtype)
    return obj


def load_torch_pickle(path: str) -> Any:
    """The object saved with `torch.save`, tensors as numpy arrays. Errors name the file."""
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, zipfile.BadZipFile,
            AttributeError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from err
    return _materialize(obj)
