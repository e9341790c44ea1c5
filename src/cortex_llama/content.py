"""OpenAI-style message content parts: text with media markers, plus the media.

``chat`` messages may carry a list of content parts instead of a string::

    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR..."}},
    ]}

:func:`split_media` turns such messages into plain-string messages (each media
part replaced by the projector's marker) and the list of :class:`Bitmap` objects,
in order, ready for a chat template and :meth:`Projector.tokenize`.

Accepted parts: ``{"type": "text", "text": ...}``; ``{"type": "image_url",
"image_url": {"url": URL}}`` (or ``"image_url": URL``) where URL is a ``data:``
URL (base64), a ``file://`` URL or a local file path; ``{"type": "input_audio",
"input_audio": {"data": BASE64, "format": "wav"|"mp3"|"flac"}}``; and, in Python,
a numpy ``HxWx3`` uint8 array, a PIL image or a :class:`Bitmap` given directly as
a part (or as ``{"type": "image", "image": ...}``). Remote ``http(s)`` URLs are
not fetched.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from .errors import MediaError
from .multimodal import Bitmap, Projector

__all__ = ["has_media", "split_media", "media_from_object"]


def has_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when any message's content is a list of parts (not a plain string)."""
    return any(isinstance(m, Mapping) and not isinstance(m.get("content"), (str, type(None)))
               for m in messages)


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def media_from_object(obj: Any, projector: Projector, where: str = "the image") -> Bitmap:
    """A :class:`Bitmap` from a numpy array, a PIL image, a Bitmap, bytes of a file,
    or a path / ``data:`` / ``file://`` URL string. Raises :class:`MediaError`
    for anything else or unreadable data, ``FileNotFoundError`` for a missing file."""
    if isinstance(obj, Bitmap):
        return obj
    if isinstance(obj, np.ndarray):
        return Bitmap.from_array(obj)
    if _is_pil(obj):
        return Bitmap.from_array(np.asarray(obj.convert("RGB")))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return Bitmap.from_bytes(projector, bytes(obj), what=where)
    if isinstance(obj, (str, os.PathLike)):
        return _from_url(os.fspath(obj), projector, where)
    raise MediaError(f"{where} must be a data: URL, a file path, bytes, a numpy array or a PIL "
                     f"image, not {type(obj).__name__}")


def _from_url(url: str, projector: Projector, where: str) -> Bitmap:
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
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
    return Bitmap.from_file(projector, path)


def _part_media(part: Any, projector: Projector, where: str) -> Bitmap:
    if not isinstance(part, Mapping):
        return media_from_object(part, projector, where)
    kind = part.get("type")
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, Mapping) else spec
        if not isinstance(url, str) or not url:
            raise MediaError(f"{where}.image_url needs a 'url' string")
        bm = _from_url(url, projector, where)
    elif kind == "image":
        bm = media_from_object(part.get("image"), projector, where)
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


def split_media(messages: Sequence[Mapping[str, Any]], projector: Projector | None
                ) -> tuple[list[dict[str, Any]], list[Bitmap]]:
    """Messages with string contents (media parts replaced by the projector's marker)
    and the media in order.

    Raises :class:`MediaError` for a media part when ``projector`` is None (the
    model has no projector), audio for a vision-only projector, undecodable or
    remote media, or text that contains the marker itself; ``ValueError`` for an
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
        pieces: list[str] = []
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
                pieces.append(text)
                continue
            if projector is None:
                raise MediaError(f"{where} is an image or audio part, but this model has no "
                                 "projector: load it with mmproj=... (ModelConfig.mmproj)")
            media.append(_part_media(part, projector, where))
            pieces.append(projector.marker)
        m["content"] = "".join(pieces)
        out.append(m)
    return out, media
