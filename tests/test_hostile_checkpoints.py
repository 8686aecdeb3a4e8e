"""Crafted checkpoint, safetensors and prompt files: each is refused with one error naming the file.

Every file is generated here (no committed binaries). Cases that could hang, exhaust memory or
crash the interpreter if the reader regressed run in a child process under a timeout and an
address-space limit, so a regression fails the test instead of taking the machine down.
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import torch

from dpiqa_jax import prompts
from dpiqa_jax.convert import torch_layout, torch_pickle
from dpiqa_jax.convert.torch_pickle import CheckpointError
from test_convert_cli import (official_student_state_dict, official_teacher_state_dict, save_torch,
                              write_sd_configs)
from test_scorer import IMAGE_SIZE, REPO_ROOT, run_module

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
CHILD_TIMEOUT_S = 60
CHILD_ADDRESS_SPACE = 3 * 2**30


# --------------------------------------------------------------------------- crafting pickles


class _StorageRef:
    """Pickled as torch's persistent id for a storage of `numel` elements."""

    def __init__(self, key: str, numel: int, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class _View:
    """Pickled as torch's `_rebuild_tensor_v2(storage, offset, size, stride, ...)` call."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args  # pylint: disable=protected-access


class _RunsCommand:
    """Pickled as a call of os.system (posix.system): what a malicious checkpoint carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        pid = ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid


def _pickle(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, legacy).dump(obj)
    return buffer.getvalue()


def write_zip_checkpoint(path, data_pkl: bytes, storages: dict[str, bytes]) -> str:
    """A torch zip archive: archive/data.pkl, byteorder and one stored member per storage."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
    return str(path)


def legacy_header() -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, sys_info))


def write_legacy_checkpoint(path, main: bytes, storages: list[tuple[str, int, bytes]]) -> str:
    """The legacy stream: header pickles, main pickle, key list, then (int64 count, bytes)."""
    keys = pickle.dumps([key for key, _, _ in storages], protocol=2)
    blobs = b"".join(struct.pack("<q", count) + data for _, count, data in storages)
    with open(path, "wb") as f:
        f.write(legacy_header() + main + keys + blobs)
    return str(path)


def write_checkpoint(path, obj, storages: dict[str, bytes], legacy: bool,
                     counts: dict[str, int] | None = None) -> str:
    counts = counts or {}
    if legacy:
        return write_legacy_checkpoint(path, _pickle(obj, legacy=True), [
            (key, counts.get(key, len(data) // 4), data) for key, data in storages.items()])
    return write_zip_checkpoint(path, _pickle(obj), storages)


def _floats(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def _refused(path, *patterns: str) -> str:
    """Reads `path`, asserting a CheckpointError whose one-line message names the file."""
    with pytest.raises(CheckpointError) as info:
        torch_layout.read_state_dict_file(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for pattern in patterns:
        assert pattern in message, message
    return message


def _run_bounded(code: str) -> subprocess.CompletedProcess:
    """`code` in a child Python under CHILD_ADDRESS_SPACE and CHILD_TIMEOUT_S."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({CHILD_ADDRESS_SPACE}, " \
            f"{CHILD_ADDRESS_SPACE}))\n"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", limit + code], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S, env=env, cwd=REPO_ROOT)


def _refused_in_child(path, *patterns: str) -> str:
    """Like `_refused`, in a child process with bounded time and memory."""
    completed = _run_bounded(
        "from dpiqa_jax.convert import torch_layout, torch_pickle\n"
        "try:\n"
        f"    torch_layout.read_state_dict_file({str(path)!r})\n"
        "    print('READ')\n"
        "except torch_pickle.CheckpointError as err:\n"
        "    print('REFUSED', err)\n")
    assert completed.returncode == 0, completed.stderr[-2000:]
    line = completed.stdout.strip()
    assert line.startswith(f"REFUSED {path}") and "\n" not in line, line
    for pattern in patterns:
        assert pattern in line, line
    return line


def _cli_refuses(path, *patterns: str, command: str = "official-student", extra=(),
                 named=None) -> str:
    """`launch.convert` on `path`: exit 1, one line naming `named` (default: the checkpoint)."""
    completed = run_module("launch.convert", command, "--checkpoint", str(path),
                           "--output", str(path) + ".bundle", *extra)
    assert completed.returncode == 1, completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
    line = completed.stderr.strip()
    assert "\n" not in line and line.startswith("conversion failed:"), line
    assert str(named or path) in line, line
    for pattern in patterns:
        assert pattern in line, line
    assert not os.path.exists(str(path) + ".bundle")
    return line


# --------------------------------------------------------------------------- code execution


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "main", "keys", "zip"])
def test_a_pickle_calling_system_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    exploit = pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2)
    header = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
              pickle.dumps({"little_endian": True}, protocol=2)]
    main, keys = pickle.dumps({}, protocol=2), pickle.dumps([], protocol=2)
    path = tmp_path / "evil.pth"
    if where == "zip":
        write_zip_checkpoint(path, exploit, {})
    else:
        parts = dict(zip(["magic", "protocol", "sys_info"], header), main=main, keys=keys)
        parts[where] = exploit
        path.write_bytes(b"".join(parts.values()))
    _refused(path, "posix.system")
    assert not marker.exists()


def test_the_command_line_refuses_a_pickle_calling_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2))
    _cli_refuses(path, "posix.system")
    assert not marker.exists()


def test_build_on_an_allowed_global_is_refused_and_changes_nothing(tmp_path):
    # GLOBAL torch._utils._rebuild_parameter; (None, {'__name__': 'pwned'}); BUILD
    data = (b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}X\x08\x00\x00\x00__name__"
            b"X\x05\x00\x00\x00pwneds\x86b.")
    path = write_zip_checkpoint(tmp_path / "build.pth", data, {})
    _refused(path, "BUILD on torch._utils._rebuild_parameter")
    assert torch_pickle._rebuild_parameter.__name__ == "_rebuild_parameter"
    assert torch._utils._rebuild_parameter.__name__ == "_rebuild_parameter"


@pytest.mark.parametrize("body, name", [(b"(ccollections\nOrderedDict\no.", "OBJ"),
                                        (b"(icollections\nOrderedDict\n.", "INST"),
                                        (b"\x82\x01.", "EXT1"),
                                        (b"ccollections\nOrderedDict\n)\x81.", "NEWOBJ")])
def test_opcodes_that_build_arbitrary_objects_are_refused(tmp_path, body, name):
    path = write_zip_checkpoint(tmp_path / "op.pth", b"\x80\x02" + body, {})
    _refused(path, f"pickle opcode {name},")


# --------------------------------------------------------------------------- views and storages


@pytest.mark.parametrize("legacy", [False, True])
def test_a_view_past_its_storage_is_refused(tmp_path, legacy):
    storage = _StorageRef("0", 4)
    path = write_checkpoint(tmp_path / "oob.pth", {"w": _View(storage, 0, (64,), (1,))},
                            {"0": _floats(4)}, legacy)
    _refused(path, "reaches element 63, past the storage's 4 elements")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_negative_stride_is_refused(tmp_path, legacy):
    storage = _StorageRef("0", 4)
    path = write_checkpoint(tmp_path / "neg.pth", {"w": _View(storage, 3, (4,), (-1,))},
                            {"0": _floats(4)}, legacy)
    _refused(path, "negative size or stride")


def test_the_command_line_refuses_a_negative_stride_without_crashing(tmp_path):
    storage = _StorageRef("0", 4)
    path = write_checkpoint(tmp_path / "neg.pth", {"fc1.weight": _View(storage, 3, (4,), (-1,))},
                            {"0": _floats(4)}, legacy=False)
    _cli_refuses(path, "negative size or stride")


@pytest.mark.parametrize("offset, size, stride, message", [
    (-1, (2,), (1,), "negative offset"),
    (0, (2, 2), (1,), "2 sizes but 1 strides"),
    (0, (10**6, 10**6), (0, 0), "views repeating elements are not supported"),
])
def test_malformed_views_are_refused(tmp_path, offset, size, stride, message):
    storage = _StorageRef("0", 4)
    path = write_checkpoint(tmp_path / "view.pth", {"w": _View(storage, offset, size, stride)},
                            {"0": _floats(4)}, legacy=False)
    _refused(path, message)


def test_many_views_of_one_storage_cannot_multiply_memory(tmp_path):
    numel = 2**20  # 4 MiB of storage, viewed 64 times: 256 MiB if materialized
    storage = _StorageRef("0", numel)
    state = {f"w{i}": _View(storage, 0, (numel,), (1,)) for i in range(64)}
    path = write_checkpoint(tmp_path / "views.pth", state, {"0": bytes(4 * numel)}, legacy=False)
    _refused(path, "tensors would take more than")


def _zip_with_member_replaced(source: str, target, name_suffix: str, data: bytes) -> str:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as edited:
        for info in original.infolist():
            payload = data if info.filename.endswith(name_suffix) else original.read(info)
            edited.writestr(info.filename, payload, compress_type=zipfile.ZIP_STORED)
    return str(target)


def test_a_truncated_storage_of_a_real_student_checkpoint_is_refused(tmp_path):
    state = official_student_state_dict()
    original = save_torch(state, tmp_path / "student.pth")
    np.testing.assert_array_equal(torch_layout.read_state_dict_file(original)["fc1.bias"],
                                  state["fc1.bias"])
    # torch.save numbers storages in the order it meets them: here one per key, in key order.
    key, bias = str(list(state).index("fc1.bias")), state["fc1.bias"]
    path = _zip_with_member_replaced(original, tmp_path / "cut.pth", f"/data/{key}",
                                     bias.tobytes()[:4])
    _refused(path, f"holds 4 bytes, but storage '{key}' declares {bias.size} elements "
                   f"({bias.nbytes} bytes)")
    _cli_refuses(path, "holds 4 bytes")


def test_a_truncated_legacy_storage_is_refused(tmp_path):
    storage = _StorageRef("0", 16)
    path = write_legacy_checkpoint(tmp_path / "cut.pth",
                                   _pickle({"w": _View(storage, 0, (16,), (1,))}, legacy=True),
                                   [("0", 16, _floats(1))])
    _refused(path, "truncated: storage '0' needs 64 bytes, 4 remain")


@pytest.mark.parametrize("legacy, message", [
    (True, "truncated: storage '0' needs 4398046511104 bytes"),
    (False, "holds 16 bytes, but storage '0' declares 1099511627776 elements"),
])
def test_a_storage_count_of_2_to_the_40_is_refused_before_allocating(tmp_path, legacy, message):
    storage = _StorageRef("0", 2**40)
    path = write_checkpoint(tmp_path / "huge.pth", {"w": _View(storage, 0, (4,), (1,))},
                            {"0": _floats(4)}, legacy, counts={"0": 2**40})
    _refused_in_child(path, message)


def _deflated_zeros_member(gib: int) -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, size) of `gib` GiB of zeros: ~1 MB per GiB, built in ~1 s."""
    chunk = bytes(2**24)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeats = gib * 2**30 // len(chunk)
    crc = 0
    for _ in range(repeats):
        crc = zlib.crc32(chunk, crc)
    return block * repeats + compressor.flush(), crc, repeats * len(chunk)


def _write_raw_zip(path, members: list[tuple[str, int, bytes, int, int]]) -> str:
    """A zip from (name, method, payload, crc32, uncompressed size), sizes under 4 GiB."""
    body, directory = b"", b""
    for name, method, payload, crc, size in members:
        encoded = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(payload), size,
                             len(encoded), 0)
        directory += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                      + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + encoded)
        body += b"PK\x03\x04" + fields + encoded + payload
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(directory), len(body), 0)
    with open(path, "wb") as f:
        f.write(body + directory + end)
    return str(path)


@pytest.fixture(scope="module")
def two_gib_of_zeros():
    return _deflated_zeros_member(2)


@pytest.mark.parametrize("bomb_member", ["data.pkl", "storage"])
def test_a_zip_bomb_member_is_refused_before_inflating(tmp_path, two_gib_of_zeros, bomb_member):
    payload, crc, size = two_gib_of_zeros
    assert len(payload) < 3 * 2**20 and size == 2**31
    storage = _StorageRef("0", size // 4)
    data_pkl = _pickle({"w": _View(storage, 0, (size // 4,), (1,))})
    members = [("archive/byteorder", 0, b"little", zlib.crc32(b"little"), 6)]
    if bomb_member == "data.pkl":
        members.append(("archive/data.pkl", 8, payload, crc, size))
        message = "archive member archive/data.pkl declares 2147483648 bytes, more than"
    else:
        members.append(("archive/data.pkl", 0, data_pkl, zlib.crc32(data_pkl), len(data_pkl)))
        members.append(("archive/data/0", 8, payload, crc, size))
        message = "archive member archive/data/0 is compressed"
    path = _write_raw_zip(tmp_path / "bomb.pth", members)
    _refused_in_child(path, message)


# --------------------------------------------------------------------------- bombs in the pickle


def test_the_shared_tuple_bomb_finishes_at_once(tmp_path):
    bomb = ()
    for _ in range(59):
        bomb = (bomb, bomb)  # pickled with the memo: 59 levels in under 1 KB, 2^59 leaves
    data = _pickle({"w": bomb})
    assert len(data) < 1024
    path = write_zip_checkpoint(tmp_path / "tuples.pth", data, {})
    _refused_in_child(path, "entries that are not tensors: ['w']")


def test_200k_nested_lists_are_refused_cleanly(tmp_path):
    depth = 200_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # EMPTY_LIST..., APPEND...
    path = write_zip_checkpoint(tmp_path / "deep.pth", data, {})
    _refused_in_child(path, "containers nested more than 100 deep")


def test_a_list_containing_itself_is_refused(tmp_path):
    data = b"\x80\x02]q\x00h\x00a."  # EMPTY_LIST, BINPUT 0, BINGET 0, APPEND
    path = write_zip_checkpoint(tmp_path / "cycle.pth", data, {})
    _refused(path, "a container that contains itself")


def test_a_declared_string_longer_than_the_file_is_not_allocated(tmp_path):
    path = tmp_path / "long.pth"
    path.write_bytes(legacy_header() + b"\x80\x02\x8d" + struct.pack("<Q", 2**50))
    _refused_in_child(path, "truncated")


@pytest.mark.parametrize("body, message", [
    (b"\x80\x02.", "does not end with exactly one value"),
    (b"\x80\x02h\x07.", "memo entry 7 is read before it is written"),
    (b"\x80\x02}]]s.", "a dict key of type list"),
    (b"\x80\x02N", "truncated"),
])
def test_malformed_pickles_are_named(tmp_path, body, message):
    path = write_zip_checkpoint(tmp_path / "bad.pth", body, {})
    _refused(path, message)


def test_torch_state_dicts_with_metadata_read_bit_exactly(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Linear(4, 2)).double()
    state = net.state_dict()  # an OrderedDict with `_metadata`: pickled with BUILD
    for legacy in (False, True):
        path = tmp_path / f"net{legacy}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        ours = torch_layout.read_state_dict_file(path)
        assert list(ours) == list(state)
        for key, tensor in state.items():
            assert ours[key].dtype == tensor.numpy().dtype
            np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


# --------------------------------------------------------------------------- safetensors


def _write_safetensors_header(path, header: dict | bytes, data: bytes) -> str:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + data)
    return str(path)


def _entry(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _safetensors_refused(path, *patterns):
    with pytest.raises(CheckpointError) as info:
        torch_layout.read_state_dict_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable safetensors file: ") and "\n" not in message
    for pattern in patterns:
        assert pattern in message, message


@pytest.mark.parametrize("header, data, message", [
    ({"a": _entry([2], -8, 0)}, _floats(2), "data_offsets [-8, 0] are not [begin, end]"),
    ({"a": _entry([2], 0, 8), "b": _entry([2], 4, 12)}, _floats(3),
     "tensor 'b' starts at data byte 4, expected 8: it overlaps"),
    ({"a": _entry([2], 0, 8), "b": _entry([2], 12, 20)}, _floats(5), "it leaves a gap"),
    ({"a": _entry([3], 0, 8)}, _floats(2), "shape [3] x F32 is 12 bytes, data_offsets span 8"),
    ({"a": _entry([2], 0, 8)}, _floats(3), "bytes after the last tensor"),
    ({"a": _entry([4], 0, 16)}, _floats(2), "truncated file"),
    ({"a": {"dtype": "F32", "shape": [2]}}, _floats(2), "the entry is not"),
    ({"a": _entry(["2"], 0, 8)}, _floats(2), "is not a list of sizes"),
    ({"a": _entry([2], 0, 8, dtype="C64")}, _floats(2), "unsupported dtype 'C64'"),
    ({"__metadata__": [1]}, b"", "__metadata__ is not a map of strings"),
    ([1, 2], b"", "the header is a list"),
    (b"{\"a\": ", b"", "malformed header"),
    (b"{\"a\": {}, \"a\": {}}", b"", "the header names 'a' twice"),
    (b"\xff\xfe", b"", "malformed header"),
])
def test_lying_safetensors_are_refused(tmp_path, header, data, message):
    path = _write_safetensors_header(tmp_path / "w.safetensors", header, data)
    _safetensors_refused(path, message)


def test_a_header_length_past_the_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _safetensors_refused(path, "header length 4611686018427387904 exceeds")


def test_safetensors_written_by_the_library_read_back(tmp_path):
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(3, np.int64),
               "empty": np.zeros((0, 4), np.float16), "scalar": np.array(2.5, np.float64)}
    path = str(tmp_path / "lib.safetensors")
    save_file(tensors, path, metadata={"k": "v"})
    loaded = torch_layout.read_state_dict_file(path)
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)


# --------------------------------------------------------------------------- prompt embeddings


def _write_npy_header(path, shape, descr="<f4", data=b"") -> str:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)
    return str(path)


def test_a_prompts_header_declaring_10_to_the_12_rows_is_refused_before_allocating(tmp_path):
    path = _write_npy_header(tmp_path / "prompts.npy", (10**12, 768), data=_floats(768))
    completed = _run_bounded(
        "from dpiqa_jax import prompts\n"
        "try:\n"
        f"    prompts.read_prompt_array({path!r}, dim=768)\n"
        "    print('READ')\n"
        "except ValueError as err:\n"
        "    print('REFUSED', err)\n")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == (
        f"REFUSED {path}: the header declares [1000000000000, 768] float32 (3072000000000000 "
        f"bytes), the file holds 3072 bytes of data")


@pytest.mark.parametrize("shape, descr, kwargs, message", [
    ((4, 8), "|O", {}, "must be float32 [K, D]"),
    ((4, 8), "<f8", {}, "got float64 [4, 8]"),
    ((4, 8, 1), "<f4", {}, "got float32 [4, 8, 1]"),
    ((4, 8), "<f4", {"dim": 768}, "must be float32 [K, 768]"),
    ((4, 8), "<f4", {"rows": 1485}, "must be float32 [1485, D]"),
])
def test_prompt_arrays_of_the_wrong_kind_are_refused(tmp_path, shape, descr, kwargs, message):
    path = _write_npy_header(tmp_path / "p.npy", shape, descr, bytes(8 * int(np.prod(shape))))
    with pytest.raises(ValueError) as info:
        prompts.read_prompt_array(path, **kwargs)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_a_malformed_npy_is_named(tmp_path):
    path = tmp_path / "p.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}   ")
    with pytest.raises(ValueError, match=r"p.npy: not a readable .npy file"):
        prompts.read_prompt_array(path)


def test_the_command_line_refuses_a_prompts_header_bomb(tmp_path):
    checkpoint = save_torch(official_teacher_state_dict(), tmp_path / "teacher.pth")
    path = _write_npy_header(tmp_path / "prompts.npy", (10**12, 8))
    _cli_refuses(checkpoint, "the header declares [1000000000000, 8] float32",
                 command="official-teacher", named=path,
                 extra=("--prompts", path, "--sd_config_from", write_sd_configs(tmp_path / "sd"),
                        "--image_size", str(IMAGE_SIZE)))
