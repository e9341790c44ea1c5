"""Images and audio in: libmtmd's projector, media bitmaps and chunked prompts.

A :class:`Projector` is an ``mtmd_context``: the vision (and/or audio) encoder of an
``mmproj`` GGUF file, tied to the text :class:`Model` it was made for. It turns a
prompt with media markers plus :class:`Bitmap` objects into :class:`Chunks` (text
chunks of tokens, image/audio chunks of embeddings-to-be) and evaluates them into
a :class:`Context` at a position of a sequence::

    proj = Projector(model, "mmproj.gguf")
    img = Bitmap.from_file(proj, "cat.png")
    chunks = proj.tokenize(f"Look: {proj.marker}\\nWhat is it?", [img])
    n_past = proj.eval_chunks(ctx, chunks, pos=0, seq_id=0)   # logits of the last token

Positions follow each chunk's ``n_pos`` (M-RoPE models use fewer positions than
tokens); chunks that need non-causal attention get it while they are decoded, as
libmtmd says. A build without libmtmd raises :class:`LlamaError` naming the paths
tried.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

from . import _lib
from ._base import Owned
from ._lib import ffi, lib
from .context import Context
from .errors import DecodeError, LlamaError, MediaError, ModelLoadError, raise_for_decode
from .model import Model, _why

__all__ = ["Projector", "Bitmap", "Chunks", "Chunk", "available", "CHUNK_TYPES"]

PathLike = Union[str, "os.PathLike[str]"]

CHUNK_TYPES = {0: "text", 1: "image", 2: "audio"}
_GGUF_MAGIC = b"GGUF"


def available() -> bool:
    """True when this build has libmtmd (multimodal input)."""
    return _lib.mtmd_lib is not None


def _mtmd() -> Any:
    """libmtmd's handle; raises :class:`LlamaError` (with every path tried) without it."""
    if _lib.mtmd_lib is None:
        raise LlamaError(_lib.mtmd_missing or "libmtmd is not available")
    return _lib.mtmd_lib


def _content_id(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


class Bitmap(Owned):
    """One image (RGB, 8 bits per channel) or one audio clip (float32 PCM, mono).

    Make one with :meth:`from_array` (numpy ``HxWx3`` uint8), :meth:`from_pcm`
    (1-D float32 samples at the projector's :attr:`Projector.audio_sample_rate`),
    :meth:`from_file` or :meth:`from_bytes` (jpg, png, bmp, gif, ... images; wav,
    mp3, flac audio, decoded by libmtmd's helper). Every bitmap gets an :attr:`id`
    (sha256 of its content), which prompt-prefix reuse compares.
    """

    _kind = "bitmap"

    def __init__(self, ptr: Any, id: str | None = None) -> None:
        if ptr == ffi.NULL:
            raise MediaError("libmtmd could not make a bitmap")
        self._own(ptr, _mtmd().mtmd_bitmap_free)
        if id is not None:
            self.id = id

    @classmethod
    def from_array(cls, array: Any) -> Bitmap:
        """An image from a numpy ``(height, width, 3)`` uint8 RGB array (an
        ``(h, w, 4)`` RGBA array drops its alpha, an ``(h, w)`` array is gray).

        Raises ``TypeError`` for another dtype and ``ValueError`` for another shape
        or an empty image.
        """
        arr = np.asarray(array)
        if arr.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 (0-255 RGB), not {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"an image array must have shape (height, width, 3), got {arr.shape}")
        h, w = int(arr.shape[0]), int(arr.shape[1])
        if h == 0 or w == 0:
            raise ValueError(f"the image is empty ({w}x{h} pixels)")
        data = np.ascontiguousarray(arr)
        ptr = _mtmd().mtmd_bitmap_init(w, h, ffi.from_buffer("unsigned char[]", data))
        return cls(ptr, _content_id(b"rgb", f"{w}x{h}".encode(), data.tobytes()))

    @classmethod
    def from_pcm(cls, samples: Any) -> Bitmap:
        """An audio clip from 1-D float32 PCM samples (mono, in [-1, 1], at the
        projector's sample rate). Raises ``ValueError`` for another shape or no samples."""
        arr = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"audio samples must be a non-empty 1-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("audio samples contain NaN or infinity")
        ptr = _mtmd().mtmd_bitmap_init_from_audio(arr.size, ffi.from_buffer("float[]", arr))
        return cls(ptr, _content_id(b"pcm", arr.tobytes()))

    @classmethod
    def from_bytes(cls, projector: Projector, data: bytes, *, what: str = "the data") -> Bitmap:
        """An image or audio clip from the bytes of a file (format detected from its
        content). Raises :class:`MediaError` when it is neither an image nor audio
        that libmtmd reads, or audio for a projector without audio."""
        mlib = _mtmd()
        raw = bytes(data)
        if not raw:
            raise MediaError(f"{what} is empty: not an image or audio file")
        _lib.take_log_problems()
        opt = mlib.mtmd_helper_init_opt_default()
        wrapper = mlib.mtmd_helper_bitmap_init_from_buf(projector._handle(), raw, len(raw), False, opt)
        if wrapper.video_ctx != ffi.NULL:  # pragma: no cover - only in MTMD_VIDEO builds
            mlib.mtmd_helper_video_free(wrapper.video_ctx)
            if wrapper.bitmap != ffi.NULL:
                mlib.mtmd_bitmap_free(wrapper.bitmap)
            raise MediaError(f"{what} is a video; cortex-llama takes images and audio only")
        if wrapper.bitmap == ffi.NULL:
            problems = _lib.take_log_problems()
            if any("does not support audio" in p for p in problems):
                raise MediaError(f"{what} is audio, but this projector takes images only "
                                 "(supports_audio is False)")
            detail = (" (libmtmd: " + " | ".join(problems[-2:]) + ")") if problems else ""
            raise MediaError(f"{what} is not an image or audio file libmtmd can read (images: jpg, "
                             f"png, bmp, gif, tga, psd; audio: wav, mp3, flac){detail}")
        return cls(wrapper.bitmap)

    @classmethod
    def from_file(cls, projector: Projector, path: PathLike) -> Bitmap:
        """An image or audio clip read from a file; raises ``FileNotFoundError`` and
        like :meth:`from_bytes`."""
        p = Path(os.fspath(path))
        if not p.is_file():
            raise FileNotFoundError(errno.ENOENT, "media file not found", str(p))
        return cls.from_bytes(projector, p.read_bytes(), what=str(p))

    # -- properties ------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Width in pixels (for audio: the number of samples)."""
        return int(_mtmd().mtmd_bitmap_get_nx(self._check()))

    @property
    def height(self) -> int:
        """Height in pixels (1 for audio)."""
        return int(_mtmd().mtmd_bitmap_get_ny(self._check()))

    @property
    def is_audio(self) -> bool:
        return bool(_mtmd().mtmd_bitmap_is_audio(self._check()))

    @property
    def n_bytes(self) -> int:
        return int(_mtmd().mtmd_bitmap_get_n_bytes(self._check()))

    @property
    def id(self) -> str | None:
        """The content id (sha256 hex) that prompt caches compare, or None."""
        raw = _mtmd().mtmd_bitmap_get_id(self._check())
        return None if raw == ffi.NULL else ffi.string(raw).decode()

    @id.setter
    def id(self, value: str) -> None:
        _mtmd().mtmd_bitmap_set_id(self._check(), str(value).encode())

    def to_array(self) -> np.ndarray:
        """A copy of the pixels, ``(height, width, 3)`` uint8 (audio: float32 samples)."""
        ptr = self._check()
        mlib = _mtmd()
        buf = ffi.buffer(mlib.mtmd_bitmap_get_data(ptr), mlib.mtmd_bitmap_get_n_bytes(ptr))
        if self.is_audio:
            return np.frombuffer(buf, dtype=np.float32).copy()
        return np.frombuffer(buf, dtype=np.uint8).reshape(self.height, self.width, 3).copy()

    def __repr__(self) -> str:
        if self.closed:
            return "<Bitmap closed>"
        kind = f"audio {self.width} samples" if self.is_audio else f"image {self.width}x{self.height}"
        return f"<Bitmap {kind}>"


class Chunk:
    """One chunk of a tokenized multimodal prompt (a view into its :class:`Chunks`)."""

    def __init__(self, chunks: Chunks, index: int) -> None:
        self._chunks = chunks
        self.index = index

    def _handle(self) -> Any:
        return _mtmd().mtmd_input_chunks_get(self._chunks._handle(), self.index)

    @property
    def type(self) -> str:
        """``"text"``, ``"image"`` or ``"audio"``."""
        return CHUNK_TYPES[int(_mtmd().mtmd_input_chunk_get_type(self._handle()))]

    @property
    def is_media(self) -> bool:
        return self.type != "text"

    @property
    def n_tokens(self) -> int:
        """Tokens (text) or embeddings (media) of this chunk: its KV-cache cells."""
        return int(_mtmd().mtmd_input_chunk_get_n_tokens(self._handle()))

    @property
    def n_pos(self) -> int:
        """Positions this chunk takes (M-RoPE media: fewer than ``n_tokens``)."""
        return int(_mtmd().mtmd_input_chunk_get_n_pos(self._handle()))

    @property
    def id(self) -> str | None:
        """The media's content id (None for text)."""
        raw = _mtmd().mtmd_input_chunk_get_id(self._handle())
        return None if raw == ffi.NULL else ffi.string(raw).decode()

    @property
    def tokens(self) -> np.ndarray:
        """The token ids of a text chunk (int32 copy); empty for media."""
        n = ffi.new("size_t *")
        raw = _mtmd().mtmd_input_chunk_get_tokens_text(self._handle(), n)
        if raw == ffi.NULL or n[0] == 0:
            return np.empty(0, dtype=np.int32)
        return np.frombuffer(ffi.buffer(raw, n[0] * 4), dtype=np.int32).copy()

    def __repr__(self) -> str:
        return f"<Chunk {self.index} {self.type} n_tokens={self.n_tokens} n_pos={self.n_pos}>"


class Chunks(Owned):
    """A tokenized multimodal prompt: a sequence of :class:`Chunk` (made by
    :meth:`Projector.tokenize`)."""

    _kind = "chunk list"

    def __init__(self, ptr: Any) -> None:
        self._own(ptr, _mtmd().mtmd_input_chunks_free)

    def _handle(self) -> Any:
        return self._check()

    def __len__(self) -> int:
        return int(_mtmd().mtmd_input_chunks_size(self._check()))

    def __getitem__(self, i: int) -> Chunk:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"chunk index {i} out of range ({n} chunks)")
        return Chunk(self, i % n)

    def __iter__(self) -> Iterator[Chunk]:
        return (Chunk(self, i) for i in range(len(self)))

    @property
    def n_tokens(self) -> int:
        """KV-cache cells the whole prompt takes."""
        return int(_mtmd().mtmd_helper_get_n_tokens(self._check()))

    @property
    def n_pos(self) -> int:
        """Positions the whole prompt takes (the next free position after it)."""
        return int(_mtmd().mtmd_helper_get_n_pos(self._check()))

    def __repr__(self) -> str:
        if self.closed:
            return "<Chunks closed>"
        return f"<Chunks {[c.type for c in self]} n_tokens={self.n_tokens}>"


class Projector(Owned):
    """A multimodal projector (libmtmd's ``mtmd_context``) for one text :class:`Model`.

    ``Projector(model, "mmproj.gguf")`` loads the encoder; it closes when the
    model closes. ``n_threads`` CPU threads encode images; ``use_gpu`` lets an
    offload device run the encoder; ``media_marker`` replaces libmtmd's default
    marker (:attr:`marker`, ``"<__media__>"``) that stands for one image or clip in
    the text given to :meth:`tokenize`.

    Raises :class:`ModelLoadError` when the file is missing or not GGUF, or when
    libmtmd refuses it: a projector made for another text model (its message
    quotes both embedding widths), an unknown projector type, missing tensors;
    :class:`LlamaError` when this build has no libmtmd.
    """

    _kind = "projector"

    def __init__(
        self,
        model: Model,
        path: PathLike,
        *,
        n_threads: int = 4,
        use_gpu: bool = True,
        media_marker: str | None = None,
        flash_attn: bool | None = None,
        warmup: bool = False,
        image_min_tokens: int | None = None,
        image_max_tokens: int | None = None,
    ) -> None:
        mlib = _mtmd()
        mptr = model._check()
        self.path = Path(os.fspath(path))
        if not self.path.is_file():
            raise ModelLoadError(f"mmproj file not found: {self.path}", str(self.path))
        with self.path.open("rb") as fh:
            magic = fh.read(4)
        if magic != _GGUF_MAGIC:
            raise ModelLoadError(f"not a GGUF file: {self.path} (starts with {magic!r})", str(self.path))
        if int(n_threads) < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        params = mlib.mtmd_context_params_default()
        params.use_gpu = bool(use_gpu)
        params.n_threads = int(n_threads)
        params.print_timings = False
        params.warmup = bool(warmup)
        keep: list[Any] = []
        if media_marker is not None:
            if not media_marker:
                raise ValueError("media_marker must not be empty")
            raw_marker = ffi.new("char[]", media_marker.encode())
            keep.append(raw_marker)
            params.media_marker = raw_marker
        if flash_attn is not None:
            params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                      else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        for field, value in (("image_min_tokens", image_min_tokens),
                             ("image_max_tokens", image_max_tokens)):
            if value is not None:
                if int(value) < 1:
                    raise ValueError(f"{field} must be >= 1, got {value}")
                setattr(params, field, int(value))
        _lib.take_log_problems()
        ptr = mlib.mtmd_init_from_file(str(self.path).encode(), mptr, params)
        if ptr == ffi.NULL:
            raise ModelLoadError(
                _why(f"libmtmd could not load the projector {self.path} for {model.path.name}"),
                str(self.path))
        self._own(ptr, mlib.mtmd_free)
        self.model = model
        model._adopt(self)
        # encoding uses the context's compute buffers: one at a time
        self._lock = threading.RLock()
        self._vision = bool(mlib.mtmd_support_vision(ptr))
        self._audio = bool(mlib.mtmd_support_audio(ptr))
        self._rate = int(mlib.mtmd_get_audio_sample_rate(ptr))
        self._marker = ffi.string(mlib.mtmd_get_marker(ptr)).decode()
        self._mrope = bool(mlib.mtmd_decode_use_mrope(ptr))
        self._n_embd = int(lib.llama_model_n_embd_inp(mptr))

    def _handle(self) -> Any:
        return self._check()

    def __repr__(self) -> str:
        if self.closed:
            return "<Projector closed>"
        kinds = [k for k, on in (("vision", self._vision), ("audio", self._audio)) if on]
        return f"<Projector {self.path.name!r} {'+'.join(kinds)}>"

    # -- properties ------------------------------------------------------------------
    @property
    def supports_vision(self) -> bool:
        self._check()
        return self._vision

    @property
    def supports_audio(self) -> bool:
        self._check()
        return self._audio

    @property
    def audio_sample_rate(self) -> int | None:
        """Sample rate (Hz) audio must have, or None without audio support."""
        self._check()
        return self._rate if self._rate > 0 else None

    @property
    def marker(self) -> str:
        """The text that stands for one media item in :meth:`tokenize`'s prompt."""
        self._check()
        return self._marker

    @property
    def uses_mrope(self) -> bool:
        """True when the text model uses M-RoPE (media positions are 2-D)."""
        self._check()
        return self._mrope

    def needs_non_causal(self, chunk: Chunk) -> bool:
        """True when ``chunk`` must be decoded with non-causal attention."""
        return bool(_mtmd().mtmd_decode_use_non_causal(self._check(), chunk._handle()))

    # -- media -----------------------------------------------------------------------
    def load(self, source: PathLike | bytes) -> Bitmap:
        """A :class:`Bitmap` from a file path or from a file's bytes."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Bitmap.from_bytes(self, bytes(source))
        return Bitmap.from_file(self, source)

    def _check_media(self, media: Sequence[Bitmap]) -> None:
        for i, bm in enumerate(media):
            if not isinstance(bm, Bitmap):
                raise TypeError(f"media[{i}] must be a Bitmap, not {type(bm).__name__}")
            if bm.is_audio and not self._audio:
                raise MediaError(f"media[{i}] is audio, but the projector {self.path.name} takes "
                                 "images only (supports_audio is False)")
            if not bm.is_audio and not self._vision:
                raise MediaError(f"media[{i}] is an image, but the projector {self.path.name} takes "
                                 "audio only (supports_vision is False)")

    def tokenize(self, text: str, media: Sequence[Bitmap] = (), *, add_special: bool = True,
                 parse_special: bool = True) -> Chunks:
        """Split ``text`` at its media markers and tokenize it with ``media`` into
        :class:`Chunks`: one marker (:attr:`marker`) per bitmap, in order.

        ``add_special`` adds BOS as the model wants; ``parse_special`` reads
        special-token text (chat templates need it). Raises :class:`MediaError`
        when the number of markers differs from the number of bitmaps, when a
        bitmap is audio and the projector has no audio (or an image and it has
        no vision), or when libmtmd cannot preprocess a bitmap; ``TypeError`` for
        a non-Bitmap.
        """
        mlib = _mtmd()
        ptr = self._check()
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        media = list(media)
        n_markers = text.count(self._marker)
        if n_markers != len(media):
            raise MediaError(f"the prompt has {n_markers} media markers ({self._marker!r}) but "
                             f"{len(media)} images/audio clips were given: one marker per item")
        self._check_media(media)
        raw = text.encode("utf-8")
        buf = ffi.new("char[]", raw)
        inp = ffi.new("mtmd_input_text *")
        inp.text = buf
        inp.text_len = len(raw)
        inp.add_special = bool(add_special)
        inp.parse_special = bool(parse_special)
        bitmaps = ffi.new("mtmd_bitmap *[]", [bm._check() for bm in media] or 1)
        out = mlib.mtmd_input_chunks_init()
        if out == ffi.NULL:  # pragma: no cover - allocation failure
            raise MemoryError("mtmd_input_chunks_init failed")
        chunks = Chunks(out)
        _lib.take_log_problems()
        rc = mlib.mtmd_tokenize(ptr, out, inp, ffi.cast("const mtmd_bitmap * const *", bitmaps),
                                len(media))
        if rc != 0:
            chunks.close()
            if rc == 1:
                raise MediaError(_why(f"libmtmd found a different number of media markers than "
                                      f"the {len(media)} bitmaps given"))
            raise MediaError(_why(f"libmtmd could not preprocess the media (rc {rc})"))
        return chunks

    # -- evaluation ------------------------------------------------------------------
    def _check_eval(self, context: Context, pos: int, seq_id: int, n_batch: int | None) -> int:
        if not isinstance(context, Context):
            raise TypeError(f"context must be a Context, not {type(context).__name__}")
        if context.model is not self.model:
            raise ValueError("the context belongs to another model than this projector's")
        if pos < 0:
            raise ValueError(f"position {pos} is negative")
        if not 0 <= seq_id < context.n_seq_max:
            raise ValueError(f"sequence id {seq_id} is outside [0, {context.n_seq_max}) (n_seq_max)")
        nb = context.n_batch if n_batch is None else int(n_batch)
        if not 1 <= nb <= context.n_batch:
            raise ValueError(f"n_batch={nb} must be in [1, {context.n_batch}] (the context's n_batch)")
        return nb

    def eval_chunks(self, context: Context, chunks: Chunks, pos: int = 0, seq_id: int = 0, *,
                    n_batch: int | None = None, logits_last: bool = True) -> int:
        """Evaluate every chunk into ``context`` from position ``pos`` of ``seq_id``:
        text chunks are decoded, media chunks encoded and their embeddings decoded
        (non-causal where libmtmd says so, M-RoPE positions where the model uses
        them). ``logits_last`` requests the logits of the last token (read them
        with ``context.logits()``). Returns the next free position (``pos`` plus
        the chunks' ``n_pos``).

        Raises ``ValueError`` for a context of another model, a bad position,
        sequence id or ``n_batch``, or a prompt longer than the context;
        :class:`DecodeError` when encoding or decoding fails (the message quotes
        llama.cpp's log).
        """
        nb = self._check_eval(context, pos, seq_id, n_batch)
        cptr = chunks._handle()
        need = chunks.n_tokens
        if pos + need > context.n_ctx:
            raise ValueError(f"the prompt needs {need} KV cells from position {pos}, but the context "
                             f"holds n_ctx={context.n_ctx}")
        return self._eval(lambda m, lctx, out: _mtmd().mtmd_helper_eval_chunks(
            m, lctx, cptr, pos, seq_id, nb, bool(logits_last), out), context, need)

    def eval_chunk(self, context: Context, chunk: Chunk, pos: int, seq_id: int = 0, *,
                   n_batch: int | None = None, logits_last: bool = False) -> int:
        """Evaluate one chunk (text or media) like :meth:`eval_chunks`; returns the next
        free position (``pos + chunk.n_pos``). Raises like :meth:`eval_chunks`."""
        nb = self._check_eval(context, pos, seq_id, n_batch)
        hptr = chunk._handle()
        return self._eval(lambda m, lctx, out: _mtmd().mtmd_helper_eval_chunk_single(
            m, lctx, hptr, pos, seq_id, nb, bool(logits_last), out), context, chunk.n_tokens)

    def _eval(self, call: Any, context: Context, n_tokens: int) -> int:
        ptr = self._check()
        out = ffi.new("llama_pos *")
        with self._lock, context.lock:
            _lib.take_log_problems()
            rc = call(ptr, context.handle, out)
        if rc != 0:
            # libmtmd returns llama_decode's code: the same check as any decode
            # (1 is a full KV cache, which the engine answers by making room)
            raise_for_decode(int(rc), f"libmtmd evaluating {n_tokens} prompt tokens/embeddings",
                             n_tokens, context.n_ctx, _lib.take_log_problems())
        return int(out[0])

    def encode(self, chunk: Chunk) -> np.ndarray:
        """Run the encoder over a media chunk: its ``(n_tokens, n_embd)`` float32
        embeddings, ready to decode as an embedding batch at consecutive positions
        (models without M-RoPE). Raises ``ValueError`` for a text chunk and
        :class:`DecodeError` when the encoder fails."""
        mlib = _mtmd()
        ptr = self._check()
        if not chunk.is_media:
            raise ValueError("encode takes an image or audio chunk, not text")
        n = chunk.n_tokens
        with self._lock:
            _lib.take_log_problems()
            rc = mlib.mtmd_encode_chunk(ptr, chunk._handle())
            if rc != 0:
                raise DecodeError(_why(f"libmtmd could not encode the {chunk.type} (rc {rc})"), int(rc))
            raw = mlib.mtmd_get_output_embd(ptr)
            return np.frombuffer(ffi.buffer(raw, n * self._n_embd * 4),
                                 dtype=np.float32).reshape(n, self._n_embd).copy()
