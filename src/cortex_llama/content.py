"""OpenAI-style message content parts: text with media markers, plus the media.

``chat`` messages may carry a list of content parts instead of a string::

    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR..."}},
    ]}

:func:`split_media` turns such messages into messages whose content is text and
``media_marker`` parts (llama-server's: each media part becomes the projector's
marker, and llama.cpp's chat layer joins the parts as llama-server's does) and
the list of :class:`Bitmap` objects, in order, ready for a chat template and
:meth:`Projector.tokenize`.

Accepted parts: ``{"type": "text", "text": ...}``; ``{"type": "image_url",
"image_url": {"url": URL}}`` (or ``"image_url": URL``) where URL is a ``data:``
URL (base64), a ``file://`` URL or a local file path; ``{"type": "input_audio",
"input_audio": {"data": BASE64, "format": "wav"|"mp3"|"flac"}}``; and, in Python,
a numpy ``HxWx3`` uint8 array, a PIL image or a :class:`Bitmap` given directly as
a part (or as ``{"type": "image", "image": ...}``). Remote ``http(s)`` URLs are
not fetched.

Local files are read from any path by default (the library's callers choose
their files). A :class:`MediaPolicy` restricts that, as the server does: no
local file at all, or only files inside one directory, up to a size.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from .errors import MediaError
from .multimodal import Bitmap, Projector

__all__ = ["has_media", "split_media", "media_from_object", "MediaPolicy"]

DEFAULT_MEDIA_MAX_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class MediaPolicy:
    """Which local files ``file://`` URLs and paths in media parts may read.

    ``root`` None: none (only ``data:`` URLs and in-memory media); else files
    whose real path (``..`` and symlinks resolved) lies inside ``root``, given
    as paths relative to it (an absolute path inside it works too). Files over
    ``max_bytes`` are refused before they are read. The server uses this with
    ``--media-path`` (llama-server's flag).
    """

    root: Path | None = None
    max_bytes: int = DEFAULT_MEDIA_MAX_BYTES

    def read(self, spec: str, where: str) -> bytes:
        """The bytes of the file ``spec`` (a path, URL-decoded already) names. Raises
        :class:`MediaError` when local files are off, the path leaves ``root``
        (the message does not tell whether such a file exists), the file is
        missing, not a regular file, or larger than ``max_bytes``."""
        if self.root is None:
            raise MediaError(f"{where}: local files are not allowed on this server (start it with "
                             "--media-path DIR to allow files in DIR); send a data: URL")
        root = Path(os.path.realpath(self.root))
        real = Path(os.path.realpath(root / spec))  # an absolute spec replaces root here
        if real != root and root not in real.parents:
            raise MediaError(f"{where}: the path {spec!r} is outside the media directory (--media-path)")
        shown = real.relative_to(root).as_posix()
        try:
            st = real.stat()
        except OSError:
            raise MediaError(f"{where}: media file not found: {shown} (in --media-path)") from None
        if not stat.S_ISREG(st.st_mode):
            raise MediaError(f"{where}: {shown} is not a regular file")
        if st.st_size > self.max_bytes:
            raise MediaError(f"{where}: {shown} is {st.st_size} bytes, more than the limit of "
                             f"{self.max_bytes} bytes")
        try:
            with open(real, "rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except OSError as exc:
            raise MediaError(f"{where}: {shown} cannot be read ({exc.strerror})") from None
        if len(data) > self.max_bytes:  # it grew since the stat
            raise MediaError(f"{where}: {shown} is more than the limit of {self.max_bytes} bytes")
        return data


def has_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when any message's content is a list of parts (not a plain string)."""
    return any(isinstance(m, Mapping) and not isinstance(m.get("content"), (str, type(None)))
               for m in messages)


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def media_from_object(obj: Any, projector: Projector, where: str = "the image",
                      policy: MediaPolicy | None = None) -> Bitmap:
    """A :class:`Bitmap` from a numpy array, a PIL image, a Bitmap, bytes of a file,
    or a path / ``data:`` / ``file://`` URL string (local files as ``policy``
    allows; None: any). Raises :class:`MediaError` for anything else, unreadable
    data or a file the policy refuses, ``FileNotFoundError`` for a missing file
    (without a policy)."""
    if isinstance(obj, Bitmap):
        return obj
    if isinstance(obj, np.ndarray):
        return Bitmap.from_array(obj)
    if _is_pil(obj):
        return Bitmap.from_array(np.asarray(obj.convert("RGB")))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return Bitmap.from_bytes(projector, bytes(obj), what=where)
    if isinstance(obj, (str, os.PathLike)):
        return _from_url(os.fspath(obj), projector, where, policy)
    raise MediaError(f"{where} must be a data: URL, a file path, bytes, a numpy array or a PIL "
                     f"image, not {type(obj).__name__}")


def _from_url(url: str, projector: Projector, where: str, policy: MediaPolicy | None = None) -> Bitmap:
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep:
            raise MediaError(f"{where}: malformed data: URL (no comma)")
        if not head.endswith(";base64"):
            raise MediaError(f"{where}: only base64 data: URLs are supported ({head[:40]!r})")
        try:
            raw = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"{where}: the data: URL is not valid base64 ({exc})") from None
        return Bitmap.from_bytes(projector, raw, what=where)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise MediaError(f"{where}: remote URLs are not fetched ({url[:60]!r}); send a data: URL "
                         "or a local file path")
    if policy is None:
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
        return Bitmap.from_file(projector, path)
    # file://rel/x.png (llama-server's relative form), file:///abs/x.png, or a plain path;
    # both URL-decoded, so that %2E%2E is the '..' it spells
    spec = unquote(url[len("file://"):] if parsed.scheme == "file" else url)
    return Bitmap.from_bytes(projector, policy.read(spec, where), what=where)


def _part_media(part: Any, projector: Projector, where: str, policy: MediaPolicy | None) -> Bitmap:
    if not isinstance(part, Mapping):
        return media_from_object(part, projector, where, policy)
    kind = part.get("type")
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, Mapping) else spec
        if not isinstance(url, str) or not url:
            raise MediaError(f"{where}.image_url needs a 'url' string")
        bm = _from_url(url, projector, where, policy)
    elif kind == "image":
        bm = media_from_object(part.get("image"), projector, where, policy)
    elif kind == "input_audio":
        spec = part.get("input_audio")
        data = spec.get("data") if isinstance(spec, Mapping) else None
        if not isinstance(data, str):
            raise MediaError(f"{where}.input_audio needs a base64 'data' string")
        try:
            raw = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"{where}.input_audio.data is not valid base64 ({exc})") from None
        if not projector.supports_audio:
            raise MediaError(f"{where} is audio, but the projector takes images only "
                             "(supports_audio is False)")
        bm = Bitmap.from_bytes(projector, raw, what=where)
    else:  # pragma: no cover - filtered by the caller
        raise MediaError(f"{where} has an unknown type {kind!r}")
    if bm.is_audio and not projector.supports_audio:
        raise MediaError(f"{where} is audio, but the projector takes images only "
                         "(supports_audio is False)")
    if not bm.is_audio and not projector.supports_vision:
        raise MediaError(f"{where} is an image, but the projector takes audio only")
    return bm


_MEDIA_TYPES = ("image_url", "image", "input_audio")


def split_media(messages: Sequence[Mapping[str, Any]], projector: Projector | None,
                policy: MediaPolicy | None = None) -> tuple[list[dict[str, Any]], list[Bitmap]]:
    """Messages with contents of text and ``media_marker`` parts (media parts replaced
    by the projector's marker) and the media in order; local files are read as ``policy`` allows (None: any).

    Raises :class:`MediaError` for a media part when ``projector`` is None (the
    model has no projector), audio for a vision-only projector, undecodable or
    remote media, a local file the policy refuses, or text that contains the
    marker itself; ``FileNotFoundError`` for a missing file (no policy); ``ValueError`` for an
    unknown part type or a malformed part (naming ``messages[i].content[j]``).
    """
    marker = projector.marker if projector is not None else None
    out: list[dict[str, Any]] = []
    media: list[Bitmap] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ValueError(f"messages[{i}] must be a dict, not {type(msg).__name__}")
        content = msg.get("content")
        m = dict(msg)
        if isinstance(content, str):
            if marker is not None and marker in content:
                raise MediaError(f"messages[{i}].content contains the media marker {marker!r} as text")
            out.append(m)
            continue
        if content is None:  # an assistant message with tool_calls only
            out.append(m)
            continue
        if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
            parts: Sequence[Any] = content
        else:
            parts = [content]  # one part given alone: an array, an image, a part dict
        pieces: list[dict[str, str]] = []
        for j, part in enumerate(parts):
            where = f"messages[{i}].content[{j}]"
            text: str | None = None
            if isinstance(part, str):
                kind: Any = "text"
                text = part
            elif isinstance(part, Mapping):
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise ValueError(f"{where} is a text part without a 'text' string")
                if kind != "text" and kind not in _MEDIA_TYPES:
                    raise ValueError(f"{where} has an unknown type {kind!r}; expected 'text', "
                                     "'image_url' or 'input_audio'")
            else:
                kind = "media"
            if kind == "text":
                assert text is not None
                if marker is not None and marker in text:
                    raise MediaError(f"{where} contains the media marker {marker!r} as text")
                pieces.append({"type": "text", "text": text})
                continue
            if projector is None:
                raise MediaError(f"{where} is an image or audio part, but this model has no "
                                 "projector: load it with mmproj=... (ModelConfig.mmproj)")
            media.append(_part_media(part, projector, where, policy))
            pieces.append({"type": "media_marker", "text": projector.marker})
        m["content"] = pieces  # llama.cpp's chat layer joins them, as for llama-server
        out.append(m)
    return out, media
