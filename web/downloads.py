"""Responses that stream a document's bytes: safe names, the inspected type, no caching."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import quote

from flask import Response

if TYPE_CHECKING:
    from folders.documents import OpenedVersion

_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9 ._()+,-]")
_FALLBACK = "document"


def content_disposition(filename: str, *, inline: bool) -> str:
    """A Content-Disposition value per RFC 6266 with an RFC 5987 ``filename*``.

    The name loses any path (``/``, ``\\``), control characters and quotes; the plain
    ``filename`` fallback is ASCII only, so no browser can be tricked by the header.
    """
    kind = "inline" if inline else "attachment"
    name = _clean_name(filename)
    stem, extension = posixpath.splitext(name)
    ascii_name = (_ascii(stem) or _FALLBACK) + (
        "." + _ascii(extension[1:]) if _ascii(extension[1:]) else ""
    )
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    unaccented = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    plain = unaccented.encode("ascii", "replace").decode()
    return _UNSAFE_ASCII.sub("_", plain).strip(" ._")


def _clean_name(filename: str) -> str:
    # SECURITY: only the last path component, without control characters or quotes.
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C" and c not in "\"'")
    base = base.strip(" .")
    return base[:200] or _FALLBACK


def stream_document(opened: OpenedVersion, *, inline: bool) -> Response:
    """Stream an opened (already authorised, audited and authenticated) version."""
    version = opened.version
    response = Response(opened.chunks, mimetype=version.mime_type, direct_passthrough=True)
    response.headers["Content-Disposition"] = content_disposition(version.filename, inline=inline)
    response.headers["Content-Length"] = str(version.size)
    # SECURITY: records are never kept by browsers or proxies, and never type-sniffed.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
