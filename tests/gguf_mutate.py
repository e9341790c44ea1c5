"""A small GGUF reader/writer and the mutations the loader fuzz test applies.

The reader parses the header, the metadata key/values and the tensor infos into
Python values and keeps the tensor data as one raw blob, so that a mutation can
work on the structure (a duplicate key, a duplicate vocabulary token, a tensor
offset past the end) and the writer lays out a file again. Raw-byte mutations
(flips, truncation) work on the bytes the writer produces.

GGUF layout: magic ``GGUF``, u32 version, u64 n_tensors, u64 n_kv; n_kv entries
of (string key, u32 type, value); n_tensors entries of (string name, u32 n_dims,
u64 dims[n_dims], u32 ggml type, u64 offset); padding to ``general.alignment``
(default 32); the data. Strings are u64 length + bytes; arrays are u32 element
type + u64 count + elements.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class KV:
    key: str
    type: int
    value: Any
    elem_type: int | None = None  # arrays only


@dataclass
class TensorInfo:
    name: str
    dims: list[int]
    type: int
    offset: int


@dataclass
class Gguf:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data: bytes
    alignment: int = 32
    # header counts to write instead of the real ones (mutations: huge counts)
    n_tensors_override: int | None = None
    n_kv_override: int | None = None
    # raw bytes to write for one KV instead of its encoding (mutations: bad lengths/types)
    raw_kv: dict[int, bytes] = field(default_factory=dict)

    def kv(self, key: str) -> KV | None:
        return next((k for k in self.kvs if k.key == key), None)


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("Q")
        s = self.buf[self.pos: self.pos + n]
        self.pos += n
        return s.decode("utf-8", errors="surrogateescape")

    def value(self, t: int) -> Any:
        if t == STRING:
            return self.string()
        return self.take(SCALARS[t])


def read(buf: bytes) -> Gguf:
    r = _Reader(buf)
    assert buf[:4] == b"GGUF", "not a GGUF file"
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs = []
    for _ in range(n_kv):
        key, t = r.string(), r.take("I")
        if t == ARRAY:
            et, n = r.take("I"), r.take("Q")
            kvs.append(KV(key, t, [r.value(et) for _ in range(n)], et))
        else:
            kvs.append(KV(key, t, r.value(t)))
    tensors = []
    for _ in range(n_tensors):
        name, nd = r.string(), r.take("I")
        dims = [r.take("Q") for _ in range(nd)]
        tensors.append(TensorInfo(name, dims, r.take("I"), r.take("Q")))
    g = Gguf(version, kvs, tensors, b"")
    align = g.kv("general.alignment")
    g.alignment = int(align.value) if align else 32
    start = -(-r.pos // g.alignment) * g.alignment
    g.data = buf[start:]
    return g


def _string(s: str) -> bytes:
    b = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _value(t: int, v: Any) -> bytes:
    return _string(v) if t == STRING else struct.pack("<" + SCALARS[t], v)


def encode_kv(kv: KV) -> bytes:
    out = _string(kv.key) + struct.pack("<I", kv.type)
    if kv.type == ARRAY:
        assert kv.elem_type is not None
        out += struct.pack("<IQ", kv.elem_type, len(kv.value))
        return out + b"".join(_value(kv.elem_type, v) for v in kv.value)
    return out + _value(kv.type, kv.value)


def write(g: Gguf) -> bytes:
    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", g.version,
                       len(g.tensors) if g.n_tensors_override is None else g.n_tensors_override,
                       len(g.kvs) if g.n_kv_override is None else g.n_kv_override)
    for i, kv in enumerate(g.kvs):
        out += g.raw_kv.get(i, encode_kv(kv))
    for t in g.tensors:
        out += _string(t.name) + struct.pack("<I", len(t.dims))
        out += b"".join(struct.pack("<Q", d) for d in t.dims)
        out += struct.pack("<IQ", t.type, t.offset)
    out += b"\0" * (-len(out) % g.alignment)
    return bytes(out + g.data)


def metadata_end(buf: bytes) -> int:
    """Where the tensor data starts (the end of header, metadata and tensor infos)."""
    g = read(buf)
    return len(buf) - len(g.data)


# ---------------------------------------------------------------------------
# Mutations: each takes (parsed file, original bytes, rng) and returns new bytes,
# or None when it does not apply to this file.
# ---------------------------------------------------------------------------
Mutation = Callable[[Gguf, bytes, random.Random], "bytes | None"]


def _index(g: Gguf, key: str) -> int | None:
    return next((i for i, k in enumerate(g.kvs) if k.key == key), None)


def truncate(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    end = metadata_end(buf)
    cut = rng.choice([rng.randrange(4, 24), rng.randrange(24, end), rng.randrange(end, len(buf))])
    return buf[:cut]


def flip_metadata_bytes(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    out = bytearray(buf)
    end = metadata_end(buf)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(4, end)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def zero_run(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    out = bytearray(buf)
    end = metadata_end(buf)
    i = rng.randrange(4, end)
    n = rng.choice([4, 8, 64, 512])
    out[i: i + n] = b"\0" * len(out[i: i + n])
    return bytes(out)


def huge_counts(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    big = rng.choice([2**32, 2**40, 2**63 - 1, 2**64 - 1, len(g.kvs) + 1, len(g.tensors) + 1])
    if rng.random() < 0.5:
        g.n_kv_override = big
    else:
        g.n_tensors_override = big
    return write(g)


def huge_string_length(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(g.kvs))
    kv = g.kvs[i]
    big = rng.choice([2**31, 2**32 + 5, 2**62, 2**64 - 1])
    # the key's own length, or a string value's length
    if kv.type == STRING and rng.random() < 0.5:
        enc = encode_kv(kv)
        k = len(_string(kv.key)) + 4
        g.raw_kv[i] = enc[:k] + struct.pack("<Q", big) + enc[k + 8:]
    else:
        enc = encode_kv(kv)
        g.raw_kv[i] = struct.pack("<Q", big) + enc[8:]
    return write(g)


def huge_array_length(g: Gguf, buf: bytes, rng: random.Random) -> bytes | None:
    arrays = [i for i, k in enumerate(g.kvs) if k.type == ARRAY]
    if not arrays:
        return None
    i = rng.choice(arrays)
    enc = encode_kv(g.kvs[i])
    k = len(_string(g.kvs[i].key)) + 8  # key, type, element type
    g.raw_kv[i] = enc[:k] + struct.pack("<Q", rng.choice([2**32, 2**61, 2**64 - 1])) + enc[k + 8:]
    return write(g)


def bad_type_ids(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    what = rng.choice(["kv", "elem", "tensor"])
    if what == "tensor" and g.tensors:
        rng.choice(g.tensors).type = rng.choice([40, 99, 200, 2**31, 2**32 - 1])
        return write(g)
    arrays = [i for i, k in enumerate(g.kvs) if k.type == ARRAY]
    i = rng.choice(arrays) if what == "elem" and arrays else rng.randrange(len(g.kvs))
    enc = encode_kv(g.kvs[i])
    k = len(_string(g.kvs[i].key)) + (4 if what == "elem" and g.kvs[i].type == ARRAY else 0)
    g.raw_kv[i] = enc[:k] + struct.pack("<I", rng.choice([13, 99, 2**31, 2**32 - 1])) + enc[k + 4:]
    return write(g)


def duplicate_key(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    kv = rng.choice(g.kvs)
    g.kvs.insert(rng.randrange(len(g.kvs) + 1), KV(kv.key, kv.type, kv.value, kv.elem_type))
    return write(g)


def duplicate_vocab_token(g: Gguf, buf: bytes, rng: random.Random) -> bytes | None:
    toks = g.kv("tokenizer.ggml.tokens")
    if toks is None or len(toks.value) < 2:
        return None
    a, b = rng.sample(range(len(toks.value)), 2)
    toks.value[b] = toks.value[a]
    return write(g)


def mismatched_arrays(g: Gguf, buf: bytes, rng: random.Random) -> bytes | None:
    keys = [k for k in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                        "tokenizer.ggml.tokens") if g.kv(k) is not None]
    if not keys:
        return None
    kv = g.kv(rng.choice(keys))
    assert kv is not None
    kv.value = kv.value[: rng.choice([0, 1, len(kv.value) // 2, len(kv.value) - 1])]
    return write(g)


def tensor_offset_past_end(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    t = rng.choice(g.tensors)
    t.offset = rng.choice([len(g.data), len(g.data) + 4096, 2**40, 2**64 - 32])
    return write(g)


def tensor_shape_overflow(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    t = rng.choice(g.tensors)
    t.dims = [rng.choice([2**31, 2**32, 2**62, 2**63 - 1]) for _ in t.dims] or [2**63 - 1]
    if rng.random() < 0.3:
        t.dims = t.dims + [0] if len(t.dims) < 4 else [0] + t.dims[1:]
    if rng.random() < 0.3:
        t.dims = [1] * rng.choice([5, 9, 2**16])  # too many dimensions
    return write(g)


def unknown_architecture(g: Gguf, buf: bytes, rng: random.Random) -> bytes | None:
    arch = g.kv("general.architecture")
    if arch is None:
        return None
    arch.value = rng.choice(["nosucharch", "", "llama\0x", "x" * 300])
    return write(g)


def wrong_value_type(g: Gguf, buf: bytes, rng: random.Random) -> bytes:
    kv = rng.choice(g.kvs)
    if kv.type == STRING:
        kv.type, kv.value = 4, 7
    elif kv.type == ARRAY:
        kv.type, kv.value, kv.elem_type = STRING, "not an array", None
    else:
        kv.type, kv.value = STRING, "not a number"
    return write(g)


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_metadata_bytes": flip_metadata_bytes,
    "zero_run": zero_run,
    "huge_counts": huge_counts,
    "huge_string_length": huge_string_length,
    "huge_array_length": huge_array_length,
    "bad_type_ids": bad_type_ids,
    "duplicate_key": duplicate_key,
    "duplicate_vocab_token": duplicate_vocab_token,
    "mismatched_arrays": mismatched_arrays,
    "tensor_offset_past_end": tensor_offset_past_end,
    "tensor_shape_overflow": tensor_shape_overflow,
    "unknown_architecture": unknown_architecture,
    "wrong_value_type": wrong_value_type,
}


def mutate(buf: bytes, name: str, seed: int) -> bytes | None:
    """``buf`` with mutation ``name`` applied (seeded), or None where it does not apply."""
    return MUTATIONS[name](read(buf), buf, random.Random(seed))
