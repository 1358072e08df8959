"""Content inspection: decide whether uploaded bytes are an allowed, inert document.

Only PDF, JPEG, PNG and TIFF are accepted. The type is sniffed from the bytes with libmagic
(the filename extension and the browser's type are never trusted) and must agree with the
filename's extension. Each type then gets a structural check of its own:

* **PDF** must open with pypdf in strict mode, have at least one page, not be encrypted, and
  carry no active content anywhere in the object graph reachable from the trailer
  (JavaScript, ``/Launch``, embedded files or file-attachment annotations, XFA forms).
* **JPEG, PNG, TIFF** are walked segment by segment, chunk by chunk, IFD by IFD, without
  decoding pixels.

Polyglots: bytes after the end of the image or document are how a second format (a ZIP, an
HTML page, a script) is smuggled inside an allowed one, so they are refused (``POLYGLOT``):

* PNG: nothing may follow the ``IEND`` chunk.
* JPEG and TIFF: only padding (``0x00``/``0xFF`` bytes, as written by devices with fixed-size
  buffers) may follow the end-of-image marker / the last byte the TIFF structure references.
* PDF: a PDF with appended data is refused **even when pypdf reads it**; only PDF whitespace
  may follow the final ``%%EOF`` marker (every real-world PDF in our samples ends that way).

What structure cannot see: a second format hidden *inside* the allowed one (a ZIP in a PDF
stream, a PNG ancillary chunk or a TIFF strip). Such files are inert as long as they are served
with their inspected type, ``X-Content-Type-Options: nosniff`` and as attachments, which is
the serving layer's job.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import struct
import unicodedata
import warnings
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import BinaryIO, Final, Protocol

import magic
from pypdf import PdfReader
from pypdf.generic import (
    ArrayObject,
    DictionaryObject,
    IndirectObject,
    NameObject,
    PdfObject,
    TextStringObject,
)

from storage.errors import ContentRejected, UploadTooLarge


class RejectReason(StrEnum):
    """Stable machine-readable codes carried by :class:`ContentRejected` as ``reason``."""

    EMPTY = "empty"
    UNSUPPORTED_TYPE = "unsupported_type"
    EXTENSION_MISMATCH = "extension_mismatch"
    BAD_FILENAME = "bad_filename"
    PDF_UNREADABLE = "pdf_unreadable"
    PDF_NO_PAGES = "pdf_no_pages"
    PDF_ENCRYPTED = "pdf_encrypted"
    PDF_JAVASCRIPT = "pdf_javascript"
    PDF_LAUNCH = "pdf_launch"
    PDF_EMBEDDED_FILE = "pdf_embedded_file"
    PDF_XFA = "pdf_xfa"
    IMAGE_UNREADABLE = "image_unreadable"
    POLYGLOT = "polyglot"
    TOO_LARGE = "too_large"


#: MIME type (as sniffed) -> the filename extensions allowed for it, lower case with the dot.
ALLOWED: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "application/pdf": frozenset({".pdf"}),
        "image/jpeg": frozenset({".jpg", ".jpeg"}),
        "image/png": frozenset({".png"}),
        "image/tiff": frozenset({".tif", ".tiff"}),
    }
)

_LABELS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "application/pdf": "a PDF document",
        "image/jpeg": "a JPEG image",
        "image/png": "a PNG image",
        "image/tiff": "a TIFF image",
    }
)

#: How much of the head libmagic sees: enough to recognise the four allowed types and to
#: name the usual impostors (HTML, archives, executables), and bounded so a huge upload is
#: not read into memory. The structural checks below then read the whole file.
SNIFF_BYTES: Final = 1024 * 1024
#: Objects (dictionaries, arrays, references) the PDF walk queues before giving up. The
#: largest real-world sample (137 pages, 8 MB) needs about 50,000; the bound stops object
#: bombs without refusing long documents.
MAX_PDF_OBJECTS: Final = 500_000
#: TIFF pages (IFDs) and IFD entries plus strip/tile offsets read before giving up.
MAX_TIFF_PAGES: Final = 10_000
MAX_TIFF_VALUES: Final = 2_000_000
MAX_FILENAME_BYTES: Final = 255
#: An "extension" longer than this is not one worth preserving when truncating a name.
_MAX_EXTENSION_BYTES: Final = 16
_CHUNK: Final = 64 * 1024

_PDF_WHITESPACE: Final = b"\x00\t\n\x0c\r "
_IMAGE_PADDING: Final = b"\x00\xff"


@dataclass(frozen=True)
class Inspection:
    """What inspection established about an accepted file."""

    mime_type: str
    extension: str
    page_count: int
    size: int


def _reject(reason: RejectReason, message: str) -> ContentRejected:
    return ContentRejected(reason.value, message)


# --- filenames ---------------------------------------------------------------------------

# SECURITY: bidirectional embeddings, overrides and isolates reorder how a name is displayed,
# so "invoice\u202efdp.exe" shows as "invoiceexe.pdf".
_BIDI_CONTROLS: Final = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
_DRIVE_PREFIX: Final = re.compile(r"^[A-Za-z]:")


def safe_filename(name: str) -> str:
    """Return the display name kept for an upload called ``name``.

    Any directory part (``/`` or ``\\`` separated, or a Windows drive) is dropped, the name is
    NFC-normalised, stripped of surrounding whitespace and cut to 255 UTF-8 bytes keeping its
    extension. Emoji and other printable Unicode are kept.

    Raises ContentRejected(BAD_FILENAME) for control characters (NUL included), bidirectional
    overrides, unpaired surrogates, or a name that is empty once the directories are gone.
    """
    for char in name:
        category = unicodedata.category(char)
        if category == "Cc":
            raise _reject(
                RejectReason.BAD_FILENAME,
                f"The file name contains a control character (U+{ord(char):04X}).",
            )
        if char in _BIDI_CONTROLS:
            raise _reject(
                RejectReason.BAD_FILENAME,
                f"The file name contains a text-direction override (U+{ord(char):04X}), "
                "which can disguise its real extension.",
            )
        if category == "Cs":
            raise _reject(
                RejectReason.BAD_FILENAME,
                "The file name is not valid Unicode (it contains an unpaired surrogate).",
            )
    # SECURITY: the display name never carries a path; object keys are generated anyway.
    base = re.split(r"[/\\]", name)[-1]
    base = _DRIVE_PREFIX.sub("", base)
    base = unicodedata.normalize("NFC", base).strip()
    if base in ("", ".", ".."):
        raise _reject(RejectReason.BAD_FILENAME, "The file name is empty.")
    return _truncate_filename(base)


def _truncate_filename(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return name
    stem, extension = posixpath.splitext(name)
    if len(extension.encode("utf-8")) > _MAX_EXTENSION_BYTES:
        stem, extension = name, ""
    budget = MAX_FILENAME_BYTES - len(extension.encode("utf-8"))
    # Cutting bytes may split a character; "ignore" drops the partial one. A dangling
    # zero-width joiner would glue the extension to the last emoji, so it goes too.
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip().rstrip("\u200d")
    return stem + extension


# --- entry point -------------------------------------------------------------------------


def inspect(file: BinaryIO, filename: str, *, max_pdf_objects: int = MAX_PDF_OBJECTS) -> Inspection:
    """Inspect an upload and describe it, or refuse it.

    ``file`` must be seekable and positioned at 0; it is left positioned at 0. ``filename`` is
    the name the client sent; its extension must agree with the sniffed type. A PDF with more
    than ``max_pdf_objects`` reachable objects is refused as too complex to check.

    Raises ContentRejected with a :class:`RejectReason` value as ``reason`` and a precise,
    user-presentable ``message``.
    """
    extension = posixpath.splitext(safe_filename(filename))[1].lower()
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    if size == 0:
        raise _reject(RejectReason.EMPTY, "The file is empty.")
    head = file.read(SNIFF_BYTES)
    mime_type = str(magic.from_buffer(head, mime=True))
    if mime_type not in ALLOWED:
        description = str(magic.from_buffer(head))
        raise _reject(
            RejectReason.UNSUPPORTED_TYPE,
            f"Its content is not a PDF or a scan: it reads as {description} ({mime_type}). "
            "Only PDF, JPEG, PNG and TIFF files are accepted.",
        )
    if extension not in ALLOWED[mime_type]:
        expected = " or ".join(sorted(ALLOWED[mime_type]))
        named = f"its name ends in {extension}" if extension else "its name has no extension"
        raise _reject(
            RejectReason.EXTENSION_MISMATCH,
            f"The file's contents are {_LABELS[mime_type]} ({mime_type}) but {named}; "
            f"a file like this must be named {expected}.",
        )
    try:
        file.seek(0)
        if mime_type == "application/pdf":
            page_count = _inspect_pdf(file, size, max_pdf_objects)
        elif mime_type == "image/jpeg":
            page_count = _inspect_jpeg(file, size)
        elif mime_type == "image/png":
            page_count = _inspect_png(file, size)
        else:
            page_count = _inspect_tiff(file, size)
    finally:
        file.seek(0)
    return Inspection(mime_type=mime_type, extension=extension, page_count=page_count, size=size)


def _describe(data: bytes) -> str:
    """Name what ``data`` looks like to libmagic, for messages about extra bytes."""
    return str(magic.from_buffer(data[:SNIFF_BYTES]))


def _reject_extra_data(file: BinaryIO, start: int, size: int, what: str, tolerated: bytes) -> None:
    """Refuse bytes from ``start`` to the end unless every one of them is in ``tolerated``.

    Raises ContentRejected(POLYGLOT) naming how much extra data there is and what it is.
    """
    file.seek(start)
    position = start
    while chunk := file.read(_CHUNK):
        meaningful = chunk.lstrip(tolerated)
        if meaningful:
            # Describe the extra data from its first meaningful byte, so a ZIP after
            # "%%EOF\n" reads as a ZIP rather than as "data".
            file.seek(position + len(chunk) - len(meaningful))
            raise _reject(
                RejectReason.POLYGLOT,
                f"The file has {size - start} bytes of extra data after the end of the {what} "
                f"({_describe(file.read(SNIFF_BYTES))}); files that hide a second format are "
                "not allowed.",
            )
        position += len(chunk)


# --- PDF ---------------------------------------------------------------------------------


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Keep pypdf's warnings and log records about hostile input out of callers' way.

    Both the warnings filters and logger levels are process-wide, so a concurrent inspection
    in another thread may briefly see these settings; that only affects pypdf's diagnostics,
    never a verdict (pypdf runs in strict mode, where problems are exceptions).
    """
    logger = logging.getLogger("pypdf")
    previous_level = logger.level
    logger.setLevel(logging.ERROR + 10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous_level)


def _inspect_pdf(file: BinaryIO, size: int, max_objects: int) -> int:
    # pypdf learns the size of a BytesIO by exporting its buffer, which makes a BytesIO
    # that shares its bytes (as a spool's views do) copy all of them first. Through a
    # buffered reader it seeks to the end instead. Every read below goes through that
    # reader, whose idea of the position would be wrong after a read around it.
    if not isinstance(file, io.BytesIO):
        return _inspect_pdf_source(file, size, max_objects)
    buffered = io.BufferedReader(file)
    try:
        return _inspect_pdf_source(buffered, size, max_objects)
    finally:
        buffered.detach()  # leaves ``file`` open for the caller


def _inspect_pdf_source(file: BinaryIO, size: int, max_objects: int) -> int:
    with _quiet_pypdf():
        try:
            reader = PdfReader(file, strict=True)
            encrypted = reader.is_encrypted
            page_count = 0 if encrypted else _walk_pages(reader)
        # SECURITY: pypdf raises an open-ended set of exception types on hostile input
        # (PdfReadError, but also KeyError, ValueError, zlib.error, RecursionError, ...);
        # every one of them means "not a PDF we can vouch for".
        except Exception as exc:
            raise _reject(
                RejectReason.PDF_UNREADABLE,
                f"The PDF is damaged or incomplete and could not be read ({_brief(exc)}).",
            ) from exc
        _reject_pdf_extra_data(file, size)
        if encrypted:
            raise _reject(
                RejectReason.PDF_ENCRYPTED,
                "The PDF is encrypted or password-protected; remove the protection and "
                "upload it again.",
            )
        if page_count == 0:
            raise _reject(RejectReason.PDF_NO_PAGES, "The PDF has no pages.")
        try:
            finding = _find_active_content(reader, max_objects)
        except ContentRejected:
            raise
        except Exception as exc:  # SECURITY: as above, any parser failure is a refusal.
            raise _reject(
                RejectReason.PDF_UNREADABLE,
                f"The PDF is damaged and could not be read completely ({_brief(exc)}).",
            ) from exc
    if finding is not None:
        reason, location = finding
        raise _reject(
            reason,
            f"The PDF contains {_ACTIVE_LABELS[reason]} (found at "
            f"{location}), which is not allowed.",
        )
    return page_count


def _walk_pages(reader: PdfReader) -> int:
    """Flatten the page tree and fetch every page; return the page count."""
    return sum(1 for _ in reader.pages)


def _brief(exc: Exception) -> str:
    """A short printable description of a parser failure, safe to show to users."""
    text = "".join(c if c.isprintable() else "?" for c in str(exc)) or type(exc).__name__
    return text[:160]


def _reject_pdf_extra_data(file: BinaryIO, size: int) -> None:
    """Refuse anything but PDF whitespace after the final ``%%EOF`` marker.

    Raises ContentRejected(POLYGLOT).
    """
    marker = b"%%EOF"
    end = size
    while end > 0:
        # Each window reaches a few bytes into the previous one, so a marker that straddles
        # the boundary is still seen.
        start = max(0, end - _CHUNK)
        file.seek(start)
        window = file.read(min(size, end + len(marker) - 1) - start)
        found = window.rfind(marker)
        if found >= 0:
            _reject_extra_data(file, start + found + len(marker), size, "PDF", _PDF_WHITESPACE)
            return
        end = start
    # pypdf's strict mode already refuses a PDF without the marker; this is a second guard.
    raise _reject(RejectReason.PDF_UNREADABLE, "The PDF has no end-of-file marker.")


_ACTIVE_LABELS: Final[Mapping[RejectReason, str]] = MappingProxyType(
    {
        RejectReason.PDF_JAVASCRIPT: "JavaScript",
        RejectReason.PDF_LAUNCH: "a Launch action that can start another program",
        RejectReason.PDF_EMBEDDED_FILE: "an embedded file",
        RejectReason.PDF_XFA: "an XFA form",
    }
)

# Names that mark active content, whether they appear as a dictionary key (/JavaScript in
# the name tree, /JS in an action, /OnInstantiate in a 3D stream, /Win in a Launch action,
# /EmbeddedFiles, /EF in a file specification, /XFA in the AcroForm) or as a value
# (/S /JavaScript, /S /Launch, /Subtype /FileAttachment, /Type /EmbeddedFile), directly or
# through an indirect reference.
# /Mac and /Unix are not flagged although a Launch action may carry them: they are also keys
# of every file specification dictionary (ISO 32000-1 §7.11.3), so flagging them would refuse
# ordinary links to other files; a Launch action must carry /S /Launch anyway.
_ACTIVE_NAMES: Final[Mapping[str, RejectReason]] = MappingProxyType(
    {
        "/JavaScript": RejectReason.PDF_JAVASCRIPT,
        "/JS": RejectReason.PDF_JAVASCRIPT,
        # A script run when a 3D annotation's artwork is instantiated (ISO 32000-1 §13.6.3).
        "/OnInstantiate": RejectReason.PDF_JAVASCRIPT,
        "/Launch": RejectReason.PDF_LAUNCH,
        # Windows launch parameters (the program and its arguments), defined only for
        # Launch actions (ISO 32000-1 §12.6.4.5).
        "/Win": RejectReason.PDF_LAUNCH,
        "/EmbeddedFiles": RejectReason.PDF_EMBEDDED_FILE,
        "/EmbeddedFile": RejectReason.PDF_EMBEDDED_FILE,
        "/EF": RejectReason.PDF_EMBEDDED_FILE,
        "/FileAttachment": RejectReason.PDF_EMBEDDED_FILE,
        "/XFA": RejectReason.PDF_XFA,
    }
)
# When a file holds several kinds of active content, the most dangerous one is reported.
_SEVERITY: Final = (
    RejectReason.PDF_JAVASCRIPT,
    RejectReason.PDF_LAUNCH,
    RejectReason.PDF_EMBEDDED_FILE,
    RejectReason.PDF_XFA,
)


def _find_active_content(reader: PdfReader, max_objects: int) -> tuple[RejectReason, str] | None:
    """Walk every object reachable from the trailer; return the worst finding and where.

    Breadth-first, so the location reported is the shortest path to the offending object.
    Indirect references are resolved once each (cycles are common and legal in PDF: pages
    point at their parent). Raises ContentRejected(PDF_UNREADABLE) past ``max_objects``.
    """
    # SECURITY: names are compared after pypdf decodes them, so "/Java#53cript" is caught.
    findings: dict[RejectReason, str] = {}
    seen: set[tuple[int, int]] = set()
    # Each entry: the object, its path, and the path of the dictionary or array holding it,
    # where a name value is reported (``/S /Launch`` in /OpenAction is found at /OpenAction).
    queue: deque[tuple[PdfObject, str, str]] = deque([(reader.trailer, "", "")])
    catalog = reader.root_object
    if "/Pages" in catalog:
        # Visit the page tree first, so something reachable from both a page and elsewhere
        # (named destinations, outlines) is reported where a reader would look: on its page.
        queue.appendleft((catalog.raw_get("/Pages"), "/Root/Pages", "/Root"))
    queued = len(queue)

    def note(reason: RejectReason | None, path: str) -> None:
        if reason is not None:
            findings.setdefault(reason, _display_path(path))

    while queue:
        obj, path, holder = queue.popleft()
        if isinstance(obj, IndirectObject):
            ref = (obj.idnum, obj.generation)
            if ref in seen:
                continue
            seen.add(ref)
            resolved = obj.get_object()
            if resolved is None:
                continue
            obj = resolved
        # SECURITY: a name value may be an indirect reference (``/S 9 0 R`` with
        # ``9 0 obj /Launch endobj``); once resolved it is checked as a direct one is.
        if isinstance(obj, NameObject):
            note(_ACTIVE_NAMES.get(obj), holder)
            continue
        children: list[tuple[PdfObject, str, str]] = []
        if isinstance(obj, DictionaryObject):
            for key, value in obj.items():
                note(_ACTIVE_NAMES.get(key), f"{path}{key}")
                if isinstance(value, NameObject):
                    note(_ACTIVE_NAMES.get(value), path)
                elif key == "/URI" and _is_javascript_uri(value):
                    note(RejectReason.PDF_JAVASCRIPT, path)
                else:
                    children.append((value, f"{path}{key}", path))
        elif isinstance(obj, ArrayObject):
            for index, item in enumerate(obj):
                if isinstance(item, NameObject):
                    note(_ACTIVE_NAMES.get(item), path)
                else:
                    children.append((item, f"{path}[{index}]", path))
        for child in children:
            if isinstance(child[0], DictionaryObject | ArrayObject | IndirectObject):
                queued += 1
                if queued > max_objects:
                    raise _reject(
                        RejectReason.PDF_UNREADABLE,
                        f"The PDF is too complex to check (more than {max_objects} objects).",
                    )
                queue.append(child)
    for reason in _SEVERITY:
        if reason in findings:
            return reason, findings[reason]
    return None


def _is_javascript_uri(value: PdfObject) -> bool:
    """A URI action whose target is a ``javascript:`` URL runs script in some viewers."""
    text = value.get_object() if isinstance(value, IndirectObject) else value
    if isinstance(text, TextStringObject | bytes):
        raw = text if isinstance(text, str) else text.decode("latin-1")
        return raw.strip().lower().startswith("javascript:")
    return False


def _display_path(path: str) -> str:
    """Show a walk path relative to the document catalog, where a reader would look."""
    if path.startswith("/Root"):
        return path.removeprefix("/Root") or "the document catalog"
    return f"trailer{path}"


# --- JPEG --------------------------------------------------------------------------------

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _image_error(kind: str, detail: str) -> ContentRejected:
    return _reject(
        RejectReason.IMAGE_UNREADABLE, f"The {kind} image is damaged or incomplete: {detail}."
    )


def _read_exact(file: BinaryIO, count: int, kind: str, what: str) -> bytes:
    data = file.read(count)
    if len(data) != count:
        raise _image_error(kind, f"the file ends inside {what}")
    return data


def _inspect_jpeg(file: BinaryIO, size: int) -> int:
    """Walk the JPEG marker segments from SOI to EOI; return 1 (one page).

    Raises ContentRejected(IMAGE_UNREADABLE) for broken structure and (POLYGLOT) for
    anything but padding after EOI.
    """
    if file.read(2) != b"\xff\xd8":
        raise _image_error("JPEG", "it does not start with a start-of-image marker")
    seen_frame = seen_scan = False
    while True:
        marker = _next_jpeg_marker(file)
        if marker == _EOI:
            break
        if marker == _SOI or marker == 0x00:
            raise _image_error("JPEG", f"unexpected marker 0x{marker:02X}")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue  # restart and TEM markers stand alone, without a length
        length = struct.unpack(">H", _read_exact(file, 2, "JPEG", "a segment header"))[0]
        body_start = file.tell()
        if length < 2 or body_start + length - 2 > size:
            raise _image_error("JPEG", f"segment 0x{marker:02X} has an impossible length")
        if marker in _SOF_MARKERS:
            seen_frame = True
        file.seek(body_start + length - 2)
        if marker == _SOS:
            if not seen_frame:
                raise _image_error("JPEG", "image data comes before the frame header")
            seen_scan = True
            _skip_entropy_coded_data(file)
    if not seen_scan:
        raise _image_error("JPEG", "it contains no image data")
    _reject_extra_data(file, file.tell(), size, "JPEG image", _IMAGE_PADDING)
    return 1


def _next_jpeg_marker(file: BinaryIO) -> int:
    """Read a marker (0xFF, optional 0xFF fill bytes, the code) and return the code."""
    if file.read(1) != b"\xff":
        raise _image_error("JPEG", "data between segments is not a marker")
    while True:
        code = _read_exact(file, 1, "JPEG", "a marker")[0]
        if code != 0xFF:
            return code


def _skip_entropy_coded_data(file: BinaryIO) -> None:
    """Leave ``file`` at the 0xFF of the first real marker after a scan's coded data.

    Inside coded data 0xFF is followed by 0x00 (a stuffed byte), a restart marker, or another
    0xFF (fill); anything else starts the next segment.
    """
    position = file.tell()
    while True:
        file.seek(position)
        chunk = file.read(_CHUNK)
        if len(chunk) < 2:
            raise _image_error("JPEG", "the file ends before the end-of-image marker")
        index = chunk.find(b"\xff")
        while index != -1 and index + 1 < len(chunk):
            code = chunk[index + 1]
            if code == 0xFF:
                index += 1
            elif code == 0x00 or 0xD0 <= code <= 0xD7:
                index = chunk.find(b"\xff", index + 2)
            else:
                file.seek(position + index)
                return
        # Either no 0xFF here, or one at the very end whose follower is in the next chunk.
        position += len(chunk) if index == -1 else index


# --- PNG ---------------------------------------------------------------------------------

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _inspect_png(file: BinaryIO, size: int) -> int:
    """Walk the PNG chunks, checking each CRC, from IHDR to IEND; return 1 (one page).

    Raises ContentRejected(IMAGE_UNREADABLE) for broken structure and (POLYGLOT) for any
    byte after IEND.
    """
    if file.read(8) != _PNG_SIGNATURE:
        raise _image_error("PNG", "it does not start with the PNG signature")
    first = True
    seen_data = False
    while True:
        length, kind = struct.unpack(">I4s", _read_exact(file, 8, "PNG", "a chunk header"))
        name = kind.decode("latin-1")
        if not (kind.isalpha() and kind.isascii()):
            raise _image_error("PNG", f"a chunk has an invalid type {name!r}")
        if length > 0x7FFFFFFF or file.tell() + length + 4 > size:
            raise _image_error("PNG", f"chunk {name} has an impossible length")
        if first and (kind != b"IHDR" or length != 13):
            raise _image_error("PNG", "the first chunk is not a valid IHDR header")
        if first:
            header = _read_exact(file, 13, "PNG", "the IHDR header")
            width, height = struct.unpack(">II", header[:8])
            if width == 0 or height == 0:
                raise _image_error("PNG", "its width or height is zero")
            crc = zlib.crc32(header, zlib.crc32(kind))
            first = False
        else:
            crc = zlib.crc32(kind)
            remaining = length
            while remaining:
                piece = _read_exact(file, min(remaining, _CHUNK), "PNG", f"chunk {name}")
                crc = zlib.crc32(piece, crc)
                remaining -= len(piece)
        if struct.unpack(">I", _read_exact(file, 4, "PNG", "a checksum"))[0] != crc:
            raise _image_error("PNG", f"chunk {name} has a bad checksum")
        seen_data = seen_data or kind == b"IDAT"
        if kind == b"IEND":
            break
    if not seen_data:
        raise _image_error("PNG", "it contains no image data")
    _reject_extra_data(file, file.tell(), size, "PNG image", b"")
    return 1


# --- TIFF --------------------------------------------------------------------------------

# Bytes per value for the classic TIFF field types (1-13).
_TIFF_TYPE_SIZES: Final[Mapping[int, int]] = MappingProxyType(
    {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
)
# Tags whose values are offsets of further IFDs: SubIFDs, Exif, GPS, Interoperability.
_TIFF_SUB_IFD_TAGS: Final = frozenset({330, 34665, 34853, 40965})
# (offsets tag, byte counts tag) pairs locating image data: strips, tiles, old-style JPEG.
_TIFF_DATA_TAGS: Final = ((273, 279), (324, 325), (513, 514))
_TIFF_OFFSET_TAGS: Final = _TIFF_SUB_IFD_TAGS | {tag for pair in _TIFF_DATA_TAGS for tag in pair}
#: Sub-IFDs nest (Exif inside a SubIFD, Interoperability inside Exif) but never deeply.
_MAX_TIFF_NESTING: Final = 4


@dataclass
class _TiffWalk:
    """State of one TIFF walk: byte order, file size, work budget and the furthest byte."""

    file: BinaryIO
    size: int
    order: str
    budget: int = MAX_TIFF_VALUES
    end: int = 8

    def take(self, count: int) -> None:
        self.budget -= count
        if self.budget < 0:
            raise _image_error("TIFF", "its structure is too complex to check")

    def cover(self, offset: int, length: int, what: str) -> None:
        """Record that ``length`` bytes at ``offset`` belong to the image."""
        if offset + length > self.size:
            raise _image_error("TIFF", f"{what} points past the end of the file")
        self.end = max(self.end, offset + length)

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset + length > self.size:
            raise _image_error("TIFF", f"the file ends inside {what}")
        self.cover(offset, length, what)
        self.file.seek(offset)
        return _read_exact(self.file, length, "TIFF", what)


def _inspect_tiff(file: BinaryIO, size: int) -> int:
    """Walk the TIFF IFD chain and everything it references; return the page count.

    Raises ContentRejected(IMAGE_UNREADABLE) for broken or cyclic structure, BigTIFF, or
    more than MAX_TIFF_PAGES pages, and (POLYGLOT) for anything but padding after the last
    byte the structure references.
    """
    header = _read_exact(file, 8, "TIFF", "the header")
    if header[:4] in (b"II+\x00", b"MM\x00+"):
        raise _image_error("TIFF", "BigTIFF files are not supported")
    if header[:4] not in (b"II*\x00", b"MM\x00*"):
        raise _image_error("TIFF", "the header is not a TIFF header")
    walk = _TiffWalk(file=file, size=size, order="<" if header[:2] == b"II" else ">")
    offset = struct.unpack(walk.order + "I", header[4:])[0]
    seen: set[int] = set()
    pages = 0
    while offset:
        pages += 1
        if pages > MAX_TIFF_PAGES:
            raise _image_error("TIFF", f"it has more than {MAX_TIFF_PAGES} pages")
        offset = _walk_ifd(walk, offset, seen, page=pages)
    if pages == 0:
        raise _image_error("TIFF", "it contains no pages")
    _reject_extra_data(file, walk.end, size, "TIFF image", _IMAGE_PADDING)
    return pages


def _walk_ifd(
    walk: _TiffWalk, offset: int, seen: set[int], page: int | None, depth: int = 0
) -> int:
    """Check one IFD and what it references; return the offset of the next IFD (0: none).

    ``page`` is the page number for IFDs in the main chain, which must hold image data, and
    None for sub-IFDs (Exif, GPS, ...), which are walked only to account for their bytes.
    """
    where = f"page {page}" if page is not None else "a sub-directory"
    if depth > _MAX_TIFF_NESTING:
        raise _image_error("TIFF", "its directories are nested too deeply")
    if offset in seen:
        raise _image_error("TIFF", "its chain of directories loops back on itself")
    seen.add(offset)
    order = walk.order
    (count,) = struct.unpack(order + "H", walk.read(offset, 2, f"the directory of {where}"))
    if count == 0:
        raise _image_error("TIFF", f"the directory of {where} is empty")
    walk.take(count)
    table = walk.read(offset + 2, 12 * count + 4, f"the directory of {where}")
    values: dict[int, tuple[int, ...]] = {}
    for index in range(count):
        tag, kind, number, inline = struct.unpack(
            order + "HHI4s", table[12 * index : 12 * index + 12]
        )
        if kind not in _TIFF_TYPE_SIZES:
            raise _image_error("TIFF", f"tag {tag} of {where} has unknown type {kind}")
        length = _TIFF_TYPE_SIZES[kind] * number
        if length > 4:
            walk.cover(struct.unpack(order + "I", inline)[0], length, f"tag {tag} of {where}")
        if tag in _TIFF_OFFSET_TAGS and kind in (3, 4, 13):
            walk.take(number)
            if length <= 4:
                raw = inline[:length]
            else:
                raw = walk.read(
                    struct.unpack(order + "I", inline)[0], length, f"tag {tag} of {where}"
                )
            values[tag] = struct.unpack(f"{order}{number}{'H' if kind == 3 else 'I'}", raw)
    has_data = False
    for offsets_tag, counts_tag in _TIFF_DATA_TAGS:
        offsets, counts = values.get(offsets_tag), values.get(counts_tag)
        if offsets is None or counts is None:
            continue
        if len(offsets) != len(counts):
            raise _image_error("TIFF", f"the image data of {where} is inconsistent")
        for start, length in zip(offsets, counts, strict=True):
            walk.cover(start, length, f"the image data of {where}")
        has_data = has_data or bool(offsets)
    if page is not None and not has_data:
        raise _image_error("TIFF", f"{where} has no image data")
    for tag in _TIFF_SUB_IFD_TAGS:
        for sub_offset in values.get(tag, ()):
            while sub_offset:
                sub_offset = _walk_ifd(walk, sub_offset, seen, page=None, depth=depth + 1)
    return int(struct.unpack(order + "I", table[-4:])[0])


# --- size limit --------------------------------------------------------------------------


class _ByteSource(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class LimitedReader:
    """A read-only view of ``source`` that refuses to deliver more than ``limit_bytes``.

    ``read`` raises UploadTooLarge as soon as the source yields byte ``limit_bytes + 1``; it
    never asks the source for more than one byte past the limit in total, so an oversized
    upload costs at most ``limit_bytes + 1`` bytes of reading and memory.
    """

    def __init__(self, source: _ByteSource, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError("limit_bytes must not be negative")
        self._source = source
        self._limit = limit_bytes
        self._count = 0

    @property
    def bytes_read(self) -> int:
        """Bytes delivered so far."""
        return self._count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all remaining if negative). Raises UploadTooLarge."""
        if size < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        # SECURITY: ask for at most one byte past the limit, enough to tell "exactly at the
        # limit" from "over it" without pulling an attacker's whole stream.
        data = self._source.read(min(size, self._limit - self._count + 1))
        self._count += len(data)
        if self._count > self._limit:
            raise UploadTooLarge(self._limit)
        return data
