"""Models and their vocabularies: loading, metadata, tokenization, quantization."""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from . import _lib, registry, rpc, system
from ._base import CallbackErrors, Owned, check_ids
from ._cdef import LLAMA_TOKEN_NULL
from ._lib import ffi, lib
from .errors import LlamaError, ModelLoadError, TokenizeError
from .system import Device

__all__ = ["Model", "Vocab", "Detokenizer", "quantize", "SPLIT_MODES", "FTYPES"]

PathLike = Union[str, "os.PathLike[str]"]
TokenArray = Union[Sequence[int], np.ndarray]

SPLIT_MODES = {
    "none": lib.LLAMA_SPLIT_MODE_NONE,
    "layer": lib.LLAMA_SPLIT_MODE_LAYER,
    "row": lib.LLAMA_SPLIT_MODE_ROW,
}

#: quantization types by name, for :func:`quantize` ("Q4_0", "Q8_0", "F16", ...)
FTYPES: dict[str, int] = {
    name[len("LLAMA_FTYPE_MOSTLY_"):] if name.startswith("LLAMA_FTYPE_MOSTLY_")
    else name[len("LLAMA_FTYPE_"):]: getattr(lib, name)
    for name in dir(lib)
    if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
}

_GGUF_MAGIC = b"GGUF"


def _check_model_file(path: Path) -> None:
    """Fail in Python, naming the path, before llama.cpp sees a bad file."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}", str(path))
    if path.is_dir():
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {path}", str(path))
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}", str(path)) from exc
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(
            f"not a GGUF file: {path} (starts with {magic!r}, expected {_GGUF_MAGIC!r})", str(path)
        )


def _why(default: str) -> str:
    problems = _lib.take_log_problems()
    return default + (": " + " | ".join(problems[-4:]) if problems else "")


def _offload_devices(devices: Sequence[str | Device] | None,
                     rpc_servers: Sequence[str] | None) -> list[Device] | None:
    """The explicit offload device list for ``llama_model_params.devices``: the
    devices of ``rpc_servers`` (connected first), then ``devices`` (names or
    :class:`Device` objects), or the local GPUs when only servers are given.
    None means llama.cpp's own pick (every local GPU)."""
    if devices is None and not rpc_servers:
        return None
    if isinstance(devices, (str, Device)) or isinstance(rpc_servers, str):
        raise TypeError("devices and rpc_servers are lists (of names/Devices, of 'host:port')")
    picked: list[Device] = []
    for endpoint in rpc_servers or ():
        picked.extend(rpc.add_server(endpoint))
    local = system.devices()
    if devices is None:
        gpus = [d for d in local if d.type == "gpu"] or [d for d in local if d.type == "igpu"]
        picked.extend(gpus)
    else:
        among = local + rpc.server_devices()
        for dev in devices:
            if isinstance(dev, str):
                dev = system.devices_named([dev], among)[0]
            elif not isinstance(dev, Device) or dev.handle is None:
                raise TypeError(f"a device is a name or a Device from system.devices() or "
                                f"rpc.add_server(), not {dev!r}")
            if dev.type == "cpu":
                raise ValueError(f"{dev.name} is a CPU device: the CPU always runs the layers that "
                                 "are not offloaded; list offload devices only")
            picked.append(dev)
    names = [d.name for d in picked]
    if len(set(names)) != len(names):
        raise ValueError(f"a device is listed twice: {names}")
    return picked


def _read_str(call: Callable[[Any, int], int], initial: int = 256) -> str | None:
    """Call a llama.cpp ``(buf, size) -> needed length`` getter with a big enough buffer."""
    size = initial
    for _ in range(2):
        buf = ffi.new("char[]", size)
        n = call(buf, size)
        if n < 0:
            return None
        if n < size:
            return ffi.string(buf, n).decode("utf-8", errors="replace")
        size = n + 1
    raise LlamaError("string getter kept growing")  # pragma: no cover


def _kv_overrides(overrides: Mapping[str, Any]) -> Any:
    arr = ffi.new("struct llama_model_kv_override[]", len(overrides) + 1)
    for i, (key, value) in enumerate(overrides.items()):
        raw = key.encode()
        if len(raw) >= 128:
            raise ValueError(f"kv_overrides key {key!r} is longer than 127 bytes")
        item = arr[i]
        item.key = raw
        if isinstance(value, bool):
            item.tag, item.val_bool = lib.LLAMA_KV_OVERRIDE_TYPE_BOOL, value
        elif isinstance(value, int):
            item.tag, item.val_i64 = lib.LLAMA_KV_OVERRIDE_TYPE_INT, value
        elif isinstance(value, float):
            item.tag, item.val_f64 = lib.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
        elif isinstance(value, str):
            sval = value.encode()
            if len(sval) >= 128:
                raise ValueError(f"kv_overrides value for {key!r} is longer than 127 bytes")
            item.tag, item.val_str = lib.LLAMA_KV_OVERRIDE_TYPE_STR, sval
        else:
            raise TypeError(f"kv_overrides[{key!r}] must be bool, int, float or str, not "
                            f"{type(value).__name__}")
    return arr  # the last entry is zeroed: key[0] == 0 ends the list


class Model(Owned):
    """A GGUF model loaded by llama.cpp.

    ``Model(path, n_gpu_layers=0, ...)`` loads the file; ``close()`` frees it and
    closes every context and vocab-bound sampler made from it first. Works as a
    context manager. ``path`` may also be a registry name such as
    ``"smollm2-135m-instruct"`` (see :mod:`cortex_llama.registry`): its cached
    file, downloaded on first use.

    ``n_gpu_layers`` layers (-1: all) go to the offload devices: by default every
    local GPU (llama.cpp's pick); ``devices`` names them explicitly (names from
    ``cortex-llama info`` or :class:`Device` objects); ``rpc_servers``
    (``["host:port", ...]``) adds the devices of llama.cpp RPC servers, in that
    order, ahead of the local GPUs (see :mod:`cortex_llama.rpc`). Layers that are
    not offloaded run on the local CPU.

    ``use_extra_bufts`` (default True) lets the CPU backend put weights in its
    extra buffer types: ``CPU_REPACK`` (weights repacked at load into interleaved
    layouts that faster kernels read, for Q4_0, Q4_K, IQ4_NL, Q8_0 and others on
    AVX2/AVX-512/NEON) and ``AMX`` (only in builds with ``-DCORTEX_LLAMA_AMX=ON``);
    False keeps every weight in the plain CPU buffer, as written in the file.
    ``no_host`` (default False) stops llama.cpp from using host (pinned) buffers
    for weights of offloaded models. See :func:`cortex_llama.system.cpu_acceleration`.

    Raises :class:`ModelLoadError` (naming the path) when the file is missing, a
    directory, not GGUF, truncated or unsupported, or the progress callback
    cancelled the load; :class:`RegistryError` when a registry name's file cannot
    be fetched; :class:`RPCError` when an RPC server cannot be used;
    ``ValueError``/``TypeError`` for bad arguments. An exception raised by
    ``progress`` cancels the load and is re-raised.
    """

    _kind = "model"

    def __init__(
        self,
        path: PathLike,
        *,
        n_gpu_layers: int = 0,
        split_mode: str = "layer",
        main_gpu: int = 0,
        tensor_split: Sequence[float] | None = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        check_tensors: bool = False,
        kv_overrides: Mapping[str, bool | int | float | str] | None = None,
        progress: Callable[[float], bool | None] | None = None,
        devices: Sequence[str | Device] | None = None,
        rpc_servers: Sequence[str] | None = None,
        use_extra_bufts: bool = True,
        no_host: bool = False,
    ) -> None:
        _lib.init()
        self.path = Path(os.fspath(registry.resolve(path)))  # a registry name: its cached file
        _check_model_file(self.path)
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"split_mode must be one of {sorted(SPLIT_MODES)}, not {split_mode!r}")
        params = lib.llama_model_default_params()
        params.n_gpu_layers = int(n_gpu_layers)
        params.split_mode = SPLIT_MODES[split_mode]
        params.main_gpu = int(main_gpu)
        params.vocab_only = bool(vocab_only)
        params.check_tensors = bool(check_tensors)
        params.use_extra_bufts = bool(use_extra_bufts)
        params.no_host = bool(no_host)
        if rpc_servers and params.n_gpu_layers == 0:
            raise ValueError("rpc_servers were given but n_gpu_layers=0 would keep every layer "
                             "local: pass n_gpu_layers=-1 (all) or a layer count")
        offload = _offload_devices(devices, rpc_servers)
        if use_mmap and use_mlock:
            params.load_mode = lib.LLAMA_LOAD_MODE_MMAP_MLOCK
        elif use_mmap:
            params.load_mode = lib.LLAMA_LOAD_MODE_MMAP
        elif use_mlock:
            params.load_mode = lib.LLAMA_LOAD_MODE_MLOCK
        else:
            params.load_mode = lib.LLAMA_LOAD_MODE_NONE
        keep: list[Any] = []  # every ffi.new the C call reads, alive until it returns
        if offload is not None:
            dev_array = ffi.new("ggml_backend_dev_t[]", [d.handle for d in offload] + [ffi.NULL])
            params.devices = dev_array
            keep.append(dev_array)
        if tensor_split is not None:
            n_max = lib.llama_max_devices()
            if len(tensor_split) > n_max:
                raise ValueError(f"tensor_split has {len(tensor_split)} entries; "
                                 f"this build supports at most {n_max} devices")
            split = ffi.new("float[]", n_max)
            for i, frac in enumerate(tensor_split):
                split[i] = float(frac)
            params.tensor_split = split
            keep.append(split)
        if kv_overrides:
            kv = _kv_overrides(kv_overrides)
            params.kv_overrides = kv
            keep.append(kv)
        errors = CallbackErrors()
        cancelled = [False]
        if progress is not None:
            def on_progress(fraction: float, _user: Any) -> bool:
                go_on = progress(fraction)
                if go_on is False:
                    cancelled[0] = True
                return go_on is not False

            cb = ffi.callback("llama_progress_callback", on_progress, error=False,
                              onerror=errors.onerror)
            params.progress_callback = cb
            keep.append(cb)

        _lib.take_log_problems()
        ptr = lib.llama_model_load_from_file(str(self.path).encode(), params)
        errors.reraise()
        if ptr == ffi.NULL:
            if cancelled[0]:
                raise ModelLoadError(f"loading {self.path} was cancelled by the progress callback",
                                     str(self.path))
            raise ModelLoadError(
                _why(f"llama.cpp could not load {self.path} (truncated, corrupt or unsupported?)"),
                str(self.path),
            )
        size = lib.llama_model_size(ptr)
        self._own(ptr, lib.llama_model_free, size=int(size))
        self._vocab_ptr = lib.llama_model_get_vocab(ptr)
        self.vocab = Vocab(self)
        #: the offload devices this model was given (None: llama.cpp's default pick)
        self.devices: list[Device] | None = offload

    # -- metadata ---------------------------------------------------------------
    def __repr__(self) -> str:
        state = "closed" if self.closed else self.desc
        return f"<Model {self.path.name!r} {state}>"

    @property
    def n_params(self) -> int:
        """Number of parameters."""
        return int(lib.llama_model_n_params(self._check()))

    @property
    def size(self) -> int:
        """Total size of the tensors, in bytes."""
        return int(lib.llama_model_size(self._check()))

    @property
    def n_embd(self) -> int:
        return int(lib.llama_model_n_embd(self._check()))

    @property
    def n_layer(self) -> int:
        return int(lib.llama_model_n_layer(self._check()))

    @property
    def n_head(self) -> int:
        return int(lib.llama_model_n_head(self._check()))

    @property
    def n_head_kv(self) -> int:
        return int(lib.llama_model_n_head_kv(self._check()))

    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with."""
        return int(lib.llama_model_n_ctx_train(self._check()))

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_tokens

    @property
    def handle(self) -> Any:
        """The raw ``llama_model *``; raises :class:`ClosedError` when closed."""
        return self._check()

    @property
    def desc(self) -> str:
        """llama.cpp's one-line description, e.g. ``"llama ?B all F32"``."""
        ptr = self._check()
        return _read_str(lambda buf, n: lib.llama_model_desc(ptr, buf, n)) or ""

    @property
    def architecture(self) -> str | None:
        return self.meta("general.architecture")

    @property
    def has_ranking_head(self) -> bool:
        """Whether the GGUF declares a reranker (``<arch>.pooling_type`` is rank,
        as llama.cpp's converter writes for models with a classification head):
        only then does ``pooling="rank"`` give relevance scores."""
        return self.meta(f"{self.architecture}.pooling_type") == str(int(lib.LLAMA_POOLING_TYPE_RANK))

    @property
    def n_cls_out(self) -> int:
        """Outputs of the classification head (rank pooling's scores per sequence)."""
        return int(lib.llama_model_n_cls_out(self._check()))

    def meta(self, key: str) -> str | None:
        """One metadata value as a string, or None when the key is absent."""
        ptr = self._check()
        raw = key.encode()
        return _read_str(lambda buf, n: lib.llama_model_meta_val_str(ptr, raw, buf, n))

    @property
    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata key and value (arrays are summarized by llama.cpp)."""
        ptr = self._check()
        out: dict[str, str] = {}
        for i in range(lib.llama_model_meta_count(ptr)):
            key = _read_str(lambda buf, n: lib.llama_model_meta_key_by_index(ptr, i, buf, n))
            val = _read_str(lambda buf, n: lib.llama_model_meta_val_str_by_index(ptr, i, buf, n),
                            initial=1024)
            if key is not None:
                out[key] = val or ""
        return out

    def chat_template(self, name: str | None = None) -> str | None:
        """The model's chat template (a named one when ``name`` is given), or None."""
        ptr = self._check()
        raw = lib.llama_model_chat_template(ptr, name.encode() if name else ffi.NULL)
        return None if raw == ffi.NULL else ffi.string(raw).decode("utf-8", errors="replace")

    @property
    def has_encoder(self) -> bool:
        return bool(lib.llama_model_has_encoder(self._check()))

    @property
    def has_decoder(self) -> bool:
        return bool(lib.llama_model_has_decoder(self._check()))

    @property
    def decoder_start_token(self) -> int | None:
        """The token an encoder-decoder model's decoder starts from (None: its BOS)."""
        tok = int(lib.llama_model_decoder_start_token(self._check()))
        return None if tok == LLAMA_TOKEN_NULL else tok

    @property
    def is_recurrent(self) -> bool:
        return bool(lib.llama_model_is_recurrent(self._check()))

    # -- tokenizer shortcuts ---------------------------------------------------------
    def tokenize(self, text: str | bytes, add_special: bool = True,
                 parse_special: bool = False) -> np.ndarray:
        """See :meth:`Vocab.tokenize`."""
        return self.vocab.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: TokenArray, remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """See :meth:`Vocab.detokenize`."""
        return self.vocab.detokenize(tokens, remove_special, unparse_special)

    def _release(self, ptr: Any) -> None:
        self._vocab_ptr = None
        super()._release(ptr)


class Vocab:
    """The tokenizer of a :class:`Model` (valid while the model is open).

    Token ids are checked against ``n_tokens`` in Python: an id out of range
    raises ``ValueError`` instead of reading outside llama.cpp's tables.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._n_tokens = int(lib.llama_vocab_n_tokens(model._vocab_ptr))  # fixed per model
        #: (token, special) -> piece, shared by every Detokenizer of this vocabulary
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._texts: tuple[dict[int, str], dict[int, str]] = ({}, {})

    def _v(self) -> Any:
        self.model._check()
        return self.model._vocab_ptr

    @property
    def handle(self) -> Any:
        """The raw ``const llama_vocab *``; raises :class:`ClosedError` when its model is closed."""
        return self._v()

    @property
    def n_tokens(self) -> int:
        self._v()
        return self._n_tokens

    @property
    def type(self) -> str:
        kinds = {lib.LLAMA_VOCAB_TYPE_SPM: "spm", lib.LLAMA_VOCAB_TYPE_BPE: "bpe",
                 lib.LLAMA_VOCAB_TYPE_WPM: "wpm", lib.LLAMA_VOCAB_TYPE_UGM: "ugm",
                 lib.LLAMA_VOCAB_TYPE_RWKV: "rwkv", lib.LLAMA_VOCAB_TYPE_NONE: "none"}
        return kinds.get(lib.llama_vocab_type(self._v()), "other")

    def check_token(self, token: int) -> int:
        n = self._n_tokens
        if not 0 <= token < n:
            raise ValueError(f"token id {token} is outside the vocabulary [0, {n})")
        return int(token)

    def check_tokens(self, tokens: TokenArray) -> np.ndarray:
        """``tokens`` as a contiguous int32 array, every id checked against the vocab.
        Raises ``ValueError`` naming an id outside the vocabulary (however large)
        or a shape that is not one-dimensional."""
        try:
            arr = np.ascontiguousarray(tokens, dtype=np.int32)
        except OverflowError:  # an id beyond int32: name it
            big = next((t for t in np.ravel(np.asarray(tokens, dtype=object))
                        if not -2**31 <= int(t) < 2**31), None)
            raise ValueError(f"token id {big} is outside the vocabulary [0, {self.n_tokens})") from None
        if arr.ndim != 1:
            raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
        if arr.size:
            n = self.n_tokens
            check_ids(arr, n, f"token id {{}} is outside the vocabulary [0, {n})")
        return arr

    # special tokens: None where the model has none
    def _special(self, fn: Callable[[Any], int]) -> int | None:
        tok = int(fn(self._v()))
        return None if tok == LLAMA_TOKEN_NULL else tok

    @property
    def bos(self) -> int | None:
        return self._special(lib.llama_vocab_bos)

    @property
    def eos(self) -> int | None:
        return self._special(lib.llama_vocab_eos)

    @property
    def eot(self) -> int | None:
        return self._special(lib.llama_vocab_eot)

    @property
    def sep(self) -> int | None:
        return self._special(lib.llama_vocab_sep)

    @property
    def nl(self) -> int | None:
        return self._special(lib.llama_vocab_nl)

    @property
    def pad(self) -> int | None:
        return self._special(lib.llama_vocab_pad)

    @property
    def fim_pre(self) -> int | None:
        return self._special(lib.llama_vocab_fim_pre)

    @property
    def fim_suf(self) -> int | None:
        return self._special(lib.llama_vocab_fim_suf)

    @property
    def fim_mid(self) -> int | None:
        return self._special(lib.llama_vocab_fim_mid)

    @property
    def fim_pad(self) -> int | None:
        return self._special(lib.llama_vocab_fim_pad)

    @property
    def fim_rep(self) -> int | None:
        return self._special(lib.llama_vocab_fim_rep)

    @property
    def fim_sep(self) -> int | None:
        return self._special(lib.llama_vocab_fim_sep)

    @property
    def add_bos(self) -> bool:
        """Whether tokenizing with ``add_special`` starts with BOS (the GGUF's flag)."""
        return bool(lib.llama_vocab_get_add_bos(self._v()))

    @property
    def add_eos(self) -> bool:
        """Whether tokenizing with ``add_special`` ends with EOS (the GGUF's flag)."""
        return bool(lib.llama_vocab_get_add_eos(self._v()))

    @property
    def add_sep(self) -> bool:
        """Whether a pair of texts is joined by SEP (the GGUF's flag; BERT-style rerankers)."""
        return bool(lib.llama_vocab_get_add_sep(self._v()))

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (eos, eot, ...)."""
        return bool(lib.llama_vocab_is_eog(self._v(), self.check_token(token)))

    def is_control(self, token: int) -> bool:
        return bool(lib.llama_vocab_is_control(self._v(), self.check_token(token)))

    def attr(self, token: int) -> int:
        """The ``LLAMA_TOKEN_ATTR_*`` bit flags of a token."""
        return int(lib.llama_vocab_get_attr(self._v(), self.check_token(token)))

    def text(self, token: int) -> str:
        """The token's raw vocabulary entry (e.g. ``"▁the"``, ``"<0x0A>"``)."""
        raw = lib.llama_vocab_get_text(self._v(), self.check_token(token))
        return ffi.string(raw).decode("utf-8", errors="replace")

    def score(self, token: int) -> float:
        return float(lib.llama_vocab_get_score(self._v(), self.check_token(token)))

    # -- tokenization -----------------------------------------------------------------
    def tokenize(self, text: str | bytes, add_special: bool = True,
                 parse_special: bool = False) -> np.ndarray:
        """Tokenize ``text`` into a new int32 numpy array.

        ``add_special`` adds BOS/EOS as the model wants; ``parse_special`` turns
        special-token text such as ``<s>`` into the special token. The buffer is
        sized from llama.cpp's own count, so nothing is ever truncated.

        Raises ``TypeError`` for other types and :class:`TokenizeError` when
        llama.cpp fails.
        """
        if isinstance(text, str):
            raw = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            raw = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
        v = self._v()
        if len(raw) > 0x7FFFFFFF:
            raise ValueError(f"text of {len(raw)} bytes is longer than llama.cpp accepts")
        capacity = len(raw) + 2 + (2 if add_special else 0)
        for _ in range(2):
            out = np.empty(capacity, dtype=np.int32)
            n = lib.llama_tokenize(v, raw, len(raw), ffi.from_buffer("llama_token[]", out),
                                   capacity, add_special, parse_special)
            if n >= 0:
                return out[:n].copy() if n < capacity else out
            if n == -2147483648:  # INT32_MIN: the result does not fit int32
                break
            capacity = -n
        raise TokenizeError(f"llama_tokenize failed on a text of {len(raw)} bytes")

    def detokenize_bytes(self, tokens: TokenArray, remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """The bytes of ``tokens`` (they may end in the middle of a UTF-8 character)."""
        arr = self.check_tokens(tokens)
        v = self._v()
        size = max(16, arr.size * 8)
        ids = ffi.from_buffer("llama_token[]", arr)
        for _ in range(2):
            buf = ffi.new("char[]", size)
            n = lib.llama_detokenize(v, ids, arr.size, buf, size, remove_special, unparse_special)
            if n >= 0:
                return ffi.buffer(buf, n)[:]
            size = -n
        raise TokenizeError(f"llama_detokenize failed on {arr.size} tokens")

    def detokenize(self, tokens: TokenArray, remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """The text of ``tokens``; a broken UTF-8 sequence becomes U+FFFD.

        Raises ``ValueError`` for a token id outside the vocabulary.
        """
        return self.detokenize_bytes(tokens, remove_special, unparse_special).decode(
            "utf-8", errors="replace")

    def cached_piece(self, token: int, special: bool) -> bytes:
        """:meth:`token_to_piece` (no ``lstrip``), remembered for the model's lifetime.
        Raises ``ValueError`` for a token id outside the vocabulary."""
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            piece = self._pieces[key] = self.token_to_piece(token, special=special)
        return piece

    def whole_texts(self, special: bool) -> dict[int, str]:
        """token id -> the text of its piece, for the pieces that are whole UTF-8
        characters, filled by the :class:`Detokenizer` s of this vocabulary (one
        dict per ``special`` setting, shared: a stream's common token is one lookup)."""
        return self._texts[bool(special)]

    def token_to_piece(self, token: int, special: bool = True, lstrip: int = 0) -> bytes:
        """The bytes one token renders to, however long the piece is. Raises
        ``ValueError`` for a token id outside the vocabulary."""
        v = self._v()
        tok = self.check_token(token)
        size = 64
        for _ in range(2):
            buf = ffi.new("char[]", size)
            n = lib.llama_token_to_piece(v, tok, buf, size, lstrip, special)
            if n >= 0:
                return ffi.buffer(buf, n)[:]
            size = -n
        raise TokenizeError(f"llama_token_to_piece failed for token {token}")

    def detokenizer(self, special: bool = False, preserved: Iterable[int] = ()) -> Detokenizer:
        """A fresh :class:`Detokenizer` for streaming output (``preserved``: special
        tokens printed even when ``special`` is off, as a chat format's tool-call tags)."""
        return Detokenizer(self, special=special, preserved=preserved)


class Detokenizer:
    """Turns a stream of tokens into text deltas that never split a UTF-8 character.

    Each :meth:`feed` costs O(1) in the length of the output so far: a token's
    piece is looked up once (and cached), and an incremental UTF-8 decoder holds
    back an incomplete character until its last byte arrives.
    """

    def __init__(self, vocab: Vocab, special: bool = False, preserved: Iterable[int] = ()) -> None:
        self._vocab = vocab
        self._special = special
        self._preserved = frozenset(int(t) for t in preserved)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = False  # the decoder holds the start of a character
        # pieces that decode whole, shared by the vocabulary's detokenizers (a
        # preserved token renders as special: it is looked up the slow way)
        self._texts = vocab.whole_texts(special)

    def piece(self, token: int) -> bytes:
        return self._vocab.cached_piece(token, self._special or token in self._preserved)

    def feed(self, token: int) -> str:
        """The new complete text that ``token`` adds (possibly empty). Raises
        ``ValueError`` for a token id outside the vocabulary."""
        if not self._held:
            text = self._texts.get(token)
            if text is not None and token not in self._preserved:
                return text  # the common case: one lookup
        token = int(token)
        piece = self.piece(token)
        if not self._held:
            try:
                text = piece.decode()  # whole characters, without the decoder
            except UnicodeDecodeError:
                pass
            else:
                if token not in self._preserved:
                    self._texts[token] = text
                return text
        text = self._decoder.decode(piece)
        self._held = bool(self._decoder.getstate()[0])
        return text

    def feed_many(self, tokens: Iterable[int]) -> str:
        return "".join(self.feed(t) for t in tokens)

    def flush(self) -> str:
        """Whatever is held back at the end (an incomplete character becomes U+FFFD)."""
        self._held = False
        return self._decoder.decode(b"", final=True)

    def reset(self) -> None:
        self._held = False
        self._decoder.reset()


def quantize(
    src: PathLike,
    dst: PathLike,
    ftype: str = "Q4_0",
    *,
    n_threads: int = 0,
    allow_requantize: bool = False,
    quantize_output_tensor: bool = True,
    pure: bool = False,
) -> Path:
    """Quantize the GGUF model ``src`` into ``dst`` with llama.cpp (``llama_model_quantize``).

    ``ftype`` is a name of :data:`FTYPES` (``"Q4_0"``, ``"Q8_0"``, ``"Q4_K_M"``, ...).
    Raises ``ValueError`` for an unknown type, :class:`ModelLoadError` for a bad
    input file, and :class:`LlamaError` when llama.cpp fails.
    """
    _lib.init()
    src_p, dst_p = Path(os.fspath(src)), Path(os.fspath(dst))
    _check_model_file(src_p)
    key = ftype.upper()
    if key not in FTYPES:
        raise ValueError(f"unknown quantization type {ftype!r}; choose one of {sorted(FTYPES)}")
    params = ffi.new("llama_model_quantize_params *", lib.llama_model_quantize_default_params())
    params.nthread = int(n_threads)
    params.ftype = FTYPES[key]
    params.allow_requantize = allow_requantize
    params.quantize_output_tensor = quantize_output_tensor
    params.pure = pure
    _lib.take_log_problems()
    rc = lib.llama_model_quantize(str(src_p).encode(), str(dst_p).encode(), params)
    if rc != 0:
        raise LlamaError(_why(f"quantizing {src_p} to {ftype} failed (rc {rc})"))
    return dst_p
