"""Content inspection against generated, hostile and real-world files."""

from __future__ import annotations

import gc
import io
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pypdf import PdfReader

from storage.errors import ContentRejected, UploadTooLarge
from storage.inspect import (
    MAX_FILENAME_BYTES,
    Inspection,
    LimitedReader,
    RejectReason,
    inspect,
    safe_filename,
)
from tests.support import samples


def check(data: bytes, filename: str) -> Inspection:
    return inspect(io.BytesIO(data), filename)


def refusal(data: bytes, filename: str) -> ContentRejected:
    with pytest.raises(ContentRejected) as caught:
        check(data, filename)
    return caught.value


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def raw_stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(data), extra, data)


def one_page_pdf(catalog: bytes = b"", page: bytes = b"", *objects: bytes) -> bytes:
    """A one-page PDF written byte by byte (objects 1-4: catalog, page tree, page, contents),
    with ``catalog`` and ``page`` added to those dictionaries' entries and ``objects`` as
    objects 5, 6, ... for them to refer to."""
    return samples.raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R %s >>" % catalog,
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R %s >>" % page,
            raw_stream(b"BT /F1 12 Tf 72 720 Td (raw) Tj ET"),
            *objects,
        ]
    )


_RECT = b"/Rect [72 600 300 640]"


# --- accepted files ----------------------------------------------------------------------

ACCEPTED: list[tuple[str, Callable[[], bytes], str, str, int]] = [
    ("pdf, 3 pages", lambda: samples.make_pdf(pages=3), "report.pdf", "application/pdf", 3),
    ("pdf, 1 page", lambda: samples.make_pdf(pages=1), "REPORT.PDF", "application/pdf", 1),
    ("pdf, 40 pages", lambda: samples.make_pdf(pages=40), "iep.pdf", "application/pdf", 40),
    (
        "pdf with a GoTo action loop",
        lambda: samples.pdf_with_action_cycle(javascript=False),
        "loop.pdf",
        "application/pdf",
        1,
    ),
    (
        "pdf with ordinary names behind references",
        lambda: one_page_pdf(
            b"/PageMode 5 0 R /OpenAction << /S 6 0 R /D [3 0 R /Fit] >> /Extras [7 0 R]",
            b"",
            b"/UseOutlines",
            b"/GoTo",
            b"/Plain",
        ),
        "refs.pdf",
        "application/pdf",
        1,
    ),
    (
        # /Mac and /Unix are keys of Launch actions but also of every file specification.
        "pdf linking another file with platform file names",
        lambda: one_page_pdf(
            b"",
            b"/Annots [<< /Type /Annot /Subtype /Link %s /A << /S /GoToR /D [0 /Fit] "
            b"/F << /Type /Filespec /F (report.pdf) /UF (report.pdf) /Mac (report.pdf) "
            b"/Unix (report.pdf) >> >> >>]" % _RECT,
        ),
        "goto.pdf",
        "application/pdf",
        1,
    ),
    (
        "pdf with a duplicate %%EOF",
        lambda: samples.make_pdf(pages=2) + b"%%EOF\n",
        "twice.pdf",
        "application/pdf",
        2,
    ),
    ("jpeg", samples.make_jpeg, "scan.jpg", "image/jpeg", 1),
    ("jpeg, odd size", lambda: samples.make_jpeg(17, 9), "scan.JPEG", "image/jpeg", 1),
    ("jpeg, zero padding", lambda: samples.make_jpeg() + bytes(6), "pad.jpg", "image/jpeg", 1),
    ("png", lambda: samples.make_png(5, 3), "scan.png", "image/png", 1),
    ("tiff, 2 pages, II", samples.make_tiff, "scan.tif", "image/tiff", 2),
    (
        "tiff, 3 pages, MM",
        lambda: samples.make_tiff(pages=3, byte_order=">"),
        "scan.tiff",
        "image/tiff",
        3,
    ),
    (
        "path in the name",
        lambda: samples.make_pdf(pages=2),
        "../../etc/passwd.pdf",
        "application/pdf",
        2,
    ),
]


@pytest.mark.parametrize(
    ("factory", "filename", "mime_type", "pages"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepts_allowed_files(
    factory: Callable[[], bytes], filename: str, mime_type: str, pages: int
) -> None:
    data = factory()
    result = check(data, filename)
    assert result == Inspection(
        mime_type=mime_type,
        extension=Path(filename).suffix.lower(),
        page_count=pages,
        size=len(data),
    )


def test_leaves_the_file_at_its_start() -> None:
    for data, filename in [(samples.make_pdf(), "a.pdf"), (samples.make_tiff(), "a.tif")]:
        stream = io.BytesIO(data)
        inspect(stream, filename)
        assert stream.tell() == 0
    stream = io.BytesIO(samples.make_jpeg() + samples.zip_archive())
    with pytest.raises(ContentRejected):
        inspect(stream, "a.jpg")
    assert stream.tell() == 0


@pytest.mark.parametrize("refused", [False, True])
def test_a_pdf_in_memory_is_not_copied_and_is_left_open(refused: bool) -> None:
    data = samples.pdf_with_launch_action() if refused else samples.make_pdf()
    # A BytesIO shares the bytes it was made from until they are written to or its buffer
    # is exported (which pypdf does to learn the size): a spool's views rely on that.
    stream = io.BytesIO(data)
    if refused:
        with pytest.raises(ContentRejected):
            inspect(stream, "a.pdf")
    else:
        inspect(stream, "a.pdf")
    gc.collect()  # whatever inspection wrapped around the stream is gone
    assert stream.getvalue() is data
    assert not stream.closed and stream.tell() == 0


# --- refused files -----------------------------------------------------------------------

# (id, bytes, filename, reason, fragments the message must contain)
REFUSED: list[tuple[str, Callable[[], bytes], str, RejectReason, tuple[str, ...]]] = [
    ("empty", lambda: b"", "empty.pdf", RejectReason.EMPTY, ("empty",)),
    (
        "html renamed .pdf",
        samples.html_document,
        "report.pdf",
        RejectReason.UNSUPPORTED_TYPE,
        ("HTML document", "text/html"),
    ),
    (
        "zip renamed .pdf",
        samples.zip_archive,
        "report.pdf",
        RejectReason.UNSUPPORTED_TYPE,
        ("Zip archive", "application/zip"),
    ),
    (
        "elf renamed .pdf",
        samples.elf_executable,
        "report.pdf",
        RejectReason.UNSUPPORTED_TYPE,
        ("ELF 64-bit", "executable"),
    ),
    (
        "pe renamed .pdf",
        samples.pe_executable,
        "report.pdf",
        RejectReason.UNSUPPORTED_TYPE,
        ("PE32+ executable", "MS Windows"),
    ),
    (
        "jpeg named .png",
        samples.make_jpeg,
        "photo.png",
        RejectReason.EXTENSION_MISMATCH,
        ("JPEG", "image/jpeg", ".png", ".jpg"),
    ),
    (
        "pdf named .jpg",
        samples.make_pdf,
        "report.jpg",
        RejectReason.EXTENSION_MISMATCH,
        ("application/pdf", ".jpg", ".pdf"),
    ),
    (
        "pdf without extension",
        samples.make_pdf,
        "report",
        RejectReason.EXTENSION_MISMATCH,
        ("no extension", ".pdf"),
    ),
    (
        "pdf named .pdf.exe",
        samples.make_pdf,
        "report.pdf.exe",
        RejectReason.EXTENSION_MISMATCH,
        (".exe",),
    ),
    (
        "bidi override in name",
        samples.make_pdf,
        "invoice\u202efdp.pdf",
        RejectReason.BAD_FILENAME,
        ("U+202E",),
    ),
    (
        "javascript open action",
        samples.pdf_with_open_action_javascript,
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("The PDF contains JavaScript (found at /OpenAction), which is not allowed.",),
    ),
    (
        "document javascript",
        samples.pdf_with_document_javascript,
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("found at /Names/JavaScript",),
    ),
    (
        "javascript in page /AA",
        samples.pdf_with_page_javascript,
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("found at /Pages/Kids[0]/AA/O",),
    ),
    (
        "javascript: URI",
        samples.pdf_with_javascript_uri,
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("found at /Pages/Kids[0]/Annots[0]/A",),
    ),
    (
        "hex-escaped javascript names",
        samples.pdf_with_obfuscated_javascript,
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("found at /OpenAction",),
    ),
    (
        "javascript inside an action loop",
        lambda: samples.pdf_with_action_cycle(javascript=True),
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("found at /OpenAction/Next",),
    ),
    (
        "launch action",
        samples.pdf_with_launch_action,
        "a.pdf",
        RejectReason.PDF_LAUNCH,
        ("Launch action", "found at /Pages/Kids[0]/Annots[0]/A"),
    ),
    (
        "launch action named through a reference",
        lambda: one_page_pdf(b"/OpenAction << /S 5 0 R /F (calc.exe) >>", b"", b"/La#75nch"),
        "a.pdf",
        RejectReason.PDF_LAUNCH,
        ("Launch action", "(found at /OpenAction)"),
    ),
    (
        "launch action with only windows parameters",
        lambda: one_page_pdf(b"/OpenAction << /Win << /F (cmd.exe) /P (/c calc) >> >>"),
        "a.pdf",
        RejectReason.PDF_LAUNCH,
        ("Launch action", "(found at /OpenAction/Win)"),
    ),
    (
        "javascript name behind a reference in an array",
        lambda: one_page_pdf(b"/Extras [/Plain 5 0 R]", b"", b"/JavaScript"),
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("(found at /Extras)",),
    ),
    (
        "javascript action type behind a reference in a page's /AA",
        lambda: one_page_pdf(b"", b"/AA << /O << /Type /Action /S 5 0 R >> >>", b"/JavaScript"),
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("(found at /Pages/Kids[0]/AA/O)",),
    ),
    (
        "file attachment subtype behind a reference",
        lambda: one_page_pdf(
            b"",
            b"/Annots [<< /Type /Annot /Subtype 5 0 R %s /FS (grades.csv) >>]" % _RECT,
            b"/FileAttachment",
        ),
        "a.pdf",
        RejectReason.PDF_EMBEDDED_FILE,
        ("(found at /Pages/Kids[0]/Annots[0])",),
    ),
    (
        "embedded file type behind a reference",
        lambda: one_page_pdf(
            b"/Extra 5 0 R", b"", raw_stream(b"student,grade", b"/Type 6 0 R"), b"/EmbeddedFile"
        ),
        "a.pdf",
        RejectReason.PDF_EMBEDDED_FILE,
        ("(found at /Extra)",),
    ),
    (
        "javascript run when 3D artwork is instantiated",
        lambda: one_page_pdf(
            b"",
            b"/Annots [<< /Type /Annot /Subtype /3D %s /3DD 5 0 R >>]" % _RECT,
            raw_stream(b"U3D", b"/Type /3D /Subtype /U3D /OnInstantiate 6 0 R"),
            raw_stream(b"host.scene.renderMode = 'Wireframe';"),
        ),
        "a.pdf",
        RejectReason.PDF_JAVASCRIPT,
        ("JavaScript", "(found at /Pages/Kids[0]/Annots[0]/3DD/OnInstantiate)"),
    ),
    (
        "embedded file",
        samples.pdf_with_embedded_file,
        "a.pdf",
        RejectReason.PDF_EMBEDDED_FILE,
        ("embedded file", "found at /Names/EmbeddedFiles"),
    ),
    (
        "file attachment annotation",
        samples.pdf_with_file_attachment_annotation,
        "a.pdf",
        RejectReason.PDF_EMBEDDED_FILE,
        ("found at /Pages/Kids[0]/Annots[0]",),
    ),
    (
        "xfa form",
        samples.pdf_with_xfa,
        "a.pdf",
        RejectReason.PDF_XFA,
        ("XFA form", "found at /AcroForm/XFA"),
    ),
    (
        "encrypted, empty user password",
        samples.encrypted_pdf,
        "a.pdf",
        RejectReason.PDF_ENCRYPTED,
        ("encrypted",),
    ),
    (
        "encrypted, RC4-40 with password",
        lambda: samples.encrypted_pdf("s3cret", algorithm="RC4-40"),
        "a.pdf",
        RejectReason.PDF_ENCRYPTED,
        ("encrypted",),
    ),
    (
        "encrypted, AES-128 with password",
        lambda: samples.encrypted_pdf("s3cret", algorithm="AES-128"),
        "a.pdf",
        RejectReason.PDF_ENCRYPTED,
        ("encrypted",),
    ),
    ("zero pages", samples.zero_page_pdf, "a.pdf", RejectReason.PDF_NO_PAGES, ("no pages",)),
    (
        "truncated pdf",
        samples.truncated_pdf,
        "a.pdf",
        RejectReason.PDF_UNREADABLE,
        ("EOF marker not found",),
    ),
    (
        "pdf header then garbage",
        lambda: b"%PDF-1.7\n" + bytes(range(256)) * 8,
        "a.pdf",
        RejectReason.PDF_UNREADABLE,
        ("could not be read",),
    ),
    (
        "pdf ending in a cut-off %%EO",
        lambda: samples.make_pdf()[:-2],
        "a.pdf",
        RejectReason.PDF_UNREADABLE,
        ("end-of-file marker",),
    ),
    (
        "pdf with an appended zip",
        lambda: samples.make_pdf() + samples.zip_archive(),
        "a.pdf",
        RejectReason.POLYGLOT,
        ("after the end of the PDF", "Zip archive"),
    ),
    (
        "jpeg with an appended zip",
        lambda: samples.make_jpeg() + samples.zip_archive(),
        "a.jpg",
        RejectReason.POLYGLOT,
        ("after the end of the JPEG image", "Zip archive"),
    ),
    (
        "jpeg with padding then html",
        lambda: samples.make_jpeg() + bytes(3) + samples.html_document(),
        "a.jpg",
        RejectReason.POLYGLOT,
        ("HTML document",),
    ),
    (
        "png with appended html",
        lambda: samples.make_png() + samples.html_document(),
        "a.png",
        RejectReason.POLYGLOT,
        ("after the end of the PNG image", "HTML document"),
    ),
    (
        "png with one byte after IEND",
        lambda: samples.make_png() + b"\x00",
        "a.png",
        RejectReason.POLYGLOT,
        ("1 bytes of extra data",),
    ),
    (
        "tiff with an appended zip",
        lambda: samples.make_tiff() + samples.zip_archive(),
        "a.tif",
        RejectReason.POLYGLOT,
        ("after the end of the TIFF image", "Zip archive"),
    ),
    (
        "jpeg without EOI",
        lambda: samples.make_jpeg()[:-2],
        "a.jpg",
        RejectReason.IMAGE_UNREADABLE,
        ("end-of-image marker",),
    ),
    (
        "jpeg cut inside a segment",
        lambda: samples.make_jpeg()[:30],
        "a.jpg",
        RejectReason.IMAGE_UNREADABLE,
        ("impossible length",),
    ),
    (
        "png without IEND",
        lambda: samples.make_png()[:-12],
        "a.png",
        RejectReason.IMAGE_UNREADABLE,
        ("the file ends inside a chunk header",),
    ),
    (
        "png with a corrupted IDAT",
        lambda: flip_byte(samples.make_png(), 45),  # inside the IDAT data
        "a.png",
        RejectReason.IMAGE_UNREADABLE,
        ("chunk IDAT has a bad checksum",),
    ),
    (
        "png without image data",
        lambda: (
            samples.make_png()[:33]
            + samples.png_chunk(b"tEXt", b"Comment\x00x")
            + samples.png_chunk(b"IEND", b"")
        ),
        "a.png",
        RejectReason.IMAGE_UNREADABLE,
        ("no image data",),
    ),
    (
        "tiff with a directory loop",
        samples.tiff_with_ifd_loop,
        "a.tif",
        RejectReason.IMAGE_UNREADABLE,
        ("loops back",),
    ),
    (
        "tiff cut short",
        lambda: samples.make_tiff()[:-30],
        "a.tif",
        RejectReason.IMAGE_UNREADABLE,
        ("the file ends inside the directory of page 2",),
    ),
    (
        "tiff strip past the end",
        samples.tiff_with_strip_past_end,
        "a.tif",
        RejectReason.IMAGE_UNREADABLE,
        ("the image data of page 1 points past the end of the file",),
    ),
]


@pytest.mark.parametrize(
    ("factory", "filename", "reason", "fragments"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refuses(
    factory: Callable[[], bytes], filename: str, reason: RejectReason, fragments: tuple[str, ...]
) -> None:
    error = refusal(factory(), filename)
    assert error.reason == reason.value
    for fragment in fragments:
        assert fragment in error.message
    assert error.public_message == error.message


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        (b"/OpenAction << /S %s /F (calc.exe) >>", b"/Launch"),
        (b"/OpenAction << /Type /Action /S %s >>", b"/JavaScript"),
        (b"/Extras [/Plain %s]", b"/EmbeddedFile"),
    ],
)
def test_a_name_behind_a_reference_is_refused_as_the_name_itself_is(
    entry: bytes, name: bytes
) -> None:
    """The same reason and the same location, whether the name is written in place or
    as an indirect object (``/S 5 0 R`` with ``5 0 obj /Launch endobj``)."""
    direct = refusal(one_page_pdf(entry % name), "a.pdf")
    indirect = refusal(one_page_pdf(entry % b"5 0 R", b"", name), "a.pdf")

    assert (indirect.reason, indirect.message) == (direct.reason, direct.message)


def test_appended_zip_is_refused_even_though_pypdf_reads_the_pdf() -> None:
    # The documented decision: pypdf tolerating the extra bytes does not make them harmless.
    data = samples.make_pdf(pages=2) + samples.zip_archive()
    assert len(PdfReader(io.BytesIO(data), strict=True).pages) == 2
    assert refusal(data, "a.pdf").reason == RejectReason.POLYGLOT


def test_pdf_whitespace_after_eof_is_not_extra_data() -> None:
    assert check(samples.make_pdf(pages=1) + b"\r\n \x00\n", "a.pdf").page_count == 1


def test_object_walk_is_bounded() -> None:
    data = samples.pdf_with_many_objects(2_000)
    assert inspect(io.BytesIO(data), "a.pdf", max_pdf_objects=5_000).page_count == 1
    with pytest.raises(ContentRejected) as caught:
        inspect(io.BytesIO(data), "a.pdf", max_pdf_objects=1_000)
    assert caught.value.reason == RejectReason.PDF_UNREADABLE
    assert "too complex" in caught.value.message


def test_pypdf_diagnostics_do_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    # A second %%EOF makes pypdf log a warning even in strict mode (checked first, so this
    # test can fail); inspection must keep it quiet and restore the logger.
    data = samples.make_pdf(pages=1) + b"%%EOF\n"
    caplog.set_level(logging.DEBUG, logger="pypdf")
    PdfReader(io.BytesIO(data), strict=True)
    assert any(record.name.startswith("pypdf") for record in caplog.records)
    caplog.clear()
    assert check(data, "a.pdf").page_count == 1
    for broken in (samples.make_pdf()[:-2], samples.truncated_pdf()):
        with pytest.raises(ContentRejected):
            check(broken, "a.pdf")
    assert [r for r in caplog.records if r.name.startswith("pypdf")] == []
    assert logging.getLogger("pypdf").level == logging.DEBUG


def test_too_large_code_matches_upload_too_large() -> None:
    assert UploadTooLarge(1024).reason == RejectReason.TOO_LARGE.value


# --- real-world PDFs ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_pdfs() -> Path:
    return samples.real_pdf_dir()


@pytest.fixture(scope="session")
def real_images() -> Path:
    return samples.real_image_dir()


# Pages established with pypdf and by reading the files; each adds something of its own.
REAL_ACCEPTED = {
    "GeoBase_NHNC1_Data_Model_UML_EN.pdf": 19,  # object streams, compressed xref
    "Seige_of_Vicksburg_Sample_OCR.pdf": 6,  # an OCR'd scan, like a registrar's upload
    "imagemagick-images.pdf": 6,
    "indirect-rotation.pdf": 5,
    "issue-604.pdf": 137,  # the largest sample (8 MB)
    "fontsampler.pdf": 1,  # holds the bytes "/JS" inside font data: not JavaScript
    "form.pdf": 1,  # AcroForm without XFA
    "libreoffice-form.pdf": 1,  # AcroForm without XFA
    "pdflatex-forms.pdf": 1,  # AcroForm without XFA
    "crazyones.pdf": 1,
    "encryption/unencrypted.pdf": 1,
}

REAL_ENCRYPTED = [
    "crazyones-encrypted-256.pdf",
    "encrypted-file.pdf",
    "encrypted_doc_no_id.pdf",
    "libreoffice-writer-password.pdf",
    *(
        f"encryption/{name}.pdf"
        for name in (
            "r2-empty-password",
            "r2-owner-password",
            "r2-user-password",
            "r3-empty-password",
            "r3-user-password",
            "r4-aes-user-password",
            "r4-aes-v2-no-key-length",
            "r4-owner-password",
            "r4-user-password",
            "r5-empty-password",
            "r5-owner-password",
            "r5-user-password",
            "r6-both-passwords",
            "r6-cleartext-metadata",
            "r6-empty-password",
            "r6-owner-password",
            "r6-user-password",
        )
    ),
]

# (file, reason, message fragment)
REAL_REFUSED = [
    # Widgets with keystroke JavaScript (/AA /K) and a Launch action: JavaScript is reported.
    ("SF424_page2.pdf", RejectReason.PDF_JAVASCRIPT, "found at /Pages/Kids[0]/Annots[7]/AA/K"),
    ("attachment.pdf", RejectReason.PDF_EMBEDDED_FILE, "found at /Pages/Kids[0]/Annots[0]"),
    # A /FileAttachment annotation inside an object stream: invisible to a byte search.
    ("example.pdf", RejectReason.PDF_EMBEDDED_FILE, "found at /Pages/Kids[0]/Annots[2]"),
    # A JavaScript open action, but its startxref is wrong and strict mode stops there.
    ("issue-297.pdf", RejectReason.PDF_UNREADABLE, "Broken xref table"),
    ("issue-301.pdf", RejectReason.PDF_UNREADABLE, "endstream"),
]


@pytest.mark.parametrize(("name", "pages"), REAL_ACCEPTED.items())
def test_real_pdfs_accepted(real_pdfs: Path, name: str, pages: int) -> None:
    data = (real_pdfs / name).read_bytes()
    assert check(data, Path(name).name) == Inspection(
        mime_type="application/pdf", extension=".pdf", page_count=pages, size=len(data)
    )


@pytest.mark.parametrize("name", REAL_ENCRYPTED)
def test_real_encrypted_pdfs_refused(real_pdfs: Path, name: str) -> None:
    error = refusal((real_pdfs / name).read_bytes(), Path(name).name)
    assert error.reason == RejectReason.PDF_ENCRYPTED


@pytest.mark.parametrize(("name", "reason", "fragment"), REAL_REFUSED)
def test_real_pdfs_refused(real_pdfs: Path, name: str, reason: RejectReason, fragment: str) -> None:
    error = refusal((real_pdfs / name).read_bytes(), name)
    assert error.reason == reason
    assert fragment in error.message


def test_real_pdf_renamed_is_refused(real_pdfs: Path) -> None:
    error = refusal((real_pdfs / "crazyones.pdf").read_bytes(), "crazyones.png")
    assert error.reason == RejectReason.EXTENSION_MISMATCH


# --- real-world scans --------------------------------------------------------------------

# MIME and pages; img2pdf's own expected outputs (one PDF page per frame) agree on the pages.
REAL_IMAGES = {
    "CMYK.jpg": ("image/jpeg", 1),
    "normal.jpg": ("image/jpeg", 1),
    "gray.png": ("image/png", 1),
    "mono.png": ("image/png", 1),
    "normal.png": ("image/png", 1),
    "CMYK.tif": ("image/tiff", 1),
    "mono.tif": ("image/tiff", 1),
}


@pytest.mark.parametrize(("name", "expected"), REAL_IMAGES.items())
def test_real_images_accepted(real_images: Path, name: str, expected: tuple[str, int]) -> None:
    data = (real_images / name).read_bytes()
    result = check(data, name)
    assert (result.mime_type, result.page_count, result.size) == (*expected, len(data))


@pytest.mark.parametrize(
    ("name", "renamed"),
    [("normal.jpg", "normal.png"), ("normal.png", "normal.pdf"), ("mono.tif", "mono.jpg")],
)
def test_real_images_renamed_are_refused(real_images: Path, name: str, renamed: str) -> None:
    error = refusal((real_images / name).read_bytes(), renamed)
    assert error.reason == RejectReason.EXTENSION_MISMATCH
    assert Path(renamed).suffix in error.message


def test_real_gif_is_unsupported(real_images: Path) -> None:
    error = refusal((real_images / "animation.gif").read_bytes(), "animation.gif")
    assert error.reason == RejectReason.UNSUPPORTED_TYPE
    assert "GIF image data" in error.message


@pytest.mark.parametrize("name", ["CMYK.jpg", "normal.png", "CMYK.tif"])
def test_real_images_with_appended_zip_are_polyglots(real_images: Path, name: str) -> None:
    data = (real_images / name).read_bytes() + samples.zip_archive()
    assert refusal(data, name).reason == RejectReason.POLYGLOT


# --- LimitedReader -----------------------------------------------------------------------


class CountingSource(io.BytesIO):
    """A byte stream that counts what it hands out."""

    delivered = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.delivered += len(data)
        return data


class EndlessSource:
    """A stream that never ends, failing the test if more than ``allowed`` bytes are taken."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.delivered = 0

    def read(self, size: int = -1, /) -> bytes:
        assert size >= 0, "asked to read an endless stream to its end"
        self.delivered += size
        assert self.delivered <= self.allowed, f"{self.delivered} bytes pulled"
        return b"\x00" * size


LIMIT = 100_000


@pytest.mark.parametrize("chunk", [-1, 1, 4096, 65536, 1_000_000])
def test_limited_reader_passes_exactly_the_limit(chunk: int) -> None:
    data = bytes(range(256)) * (LIMIT // 256) + b"x" * (LIMIT % 256)
    reader = LimitedReader(CountingSource(data), LIMIT)
    read = b"".join(iter(lambda: reader.read(chunk), b"")) if chunk > 0 else reader.read()
    assert read == data
    assert reader.bytes_read == LIMIT


@pytest.mark.parametrize("chunk", [-1, 1, 4096, 65536, 1_000_000])
def test_limited_reader_refuses_one_byte_more(chunk: int) -> None:
    source = CountingSource(b"y" * (LIMIT + 1))
    reader = LimitedReader(source, LIMIT)
    with pytest.raises(UploadTooLarge) as caught:
        while reader.read(chunk):
            pass
    assert caught.value.limit_bytes == LIMIT
    assert caught.value.reason == RejectReason.TOO_LARGE
    assert source.delivered == LIMIT + 1


def test_limited_reader_stops_pulling_an_endless_stream() -> None:
    source = EndlessSource(allowed=LIMIT + 1)
    with pytest.raises(UploadTooLarge):
        shutil.copyfileobj(LimitedReader(source, LIMIT), io.BytesIO(), 64 * 1024)
    assert source.delivered == LIMIT + 1
    with pytest.raises(UploadTooLarge):
        LimitedReader(EndlessSource(allowed=LIMIT + 1), LIMIT).read()


def test_limited_reader_with_zero_limit() -> None:
    assert LimitedReader(io.BytesIO(b""), 0).read() == b""
    with pytest.raises(UploadTooLarge):
        LimitedReader(io.BytesIO(b"a"), 0).read(10)


# --- safe_filename -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd.pdf", "passwd.pdf"),
        ("C:\\evil\\x.pdf", "x.pdf"),
        ("C:x.pdf", "x.pdf"),
        ("/var/tmp/report card.pdf", "report card.pdf"),
        ("  spaced.pdf \u3000", "spaced.pdf"),
        ("📄 Report card 🎒.pdf", "📄 Report card 🎒.pdf"),
        ("👩\u200d👩\u200d👧 family.jpg", "👩\u200d👩\u200d👧 family.jpg"),
        ("Rene\u0301e.pdf", "Ren\u00e9e.pdf"),  # NFC composes e + combining acute
        ("Zoë's IEP.PDF", "Zoë's IEP.PDF"),
    ],
)
def test_safe_filename_keeps(given: str, kept: str) -> None:
    assert safe_filename(given) == kept


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("evil\x00.pdf", "U+0000"),
        ("line\nbreak.pdf", "U+000A"),
        ("bell\x7f.pdf", "U+007F"),
        ("invoice\u202efdp.exe", "U+202E"),
        ("a\u2066b.pdf", "U+2066"),
        ("surrogate\ud800.pdf", "surrogate"),
        ("", "empty"),
        ("../", "empty"),
        ("C:\\", "empty"),
        ("dir/..", "empty"),
        ("   ", "empty"),
    ],
)
def test_safe_filename_refuses(given: str, fragment: str) -> None:
    with pytest.raises(ContentRejected) as caught:
        safe_filename(given)
    assert caught.value.reason == RejectReason.BAD_FILENAME
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("a" * 300 + ".pdf", "a" * 251 + ".pdf"),
        ("é" * 300 + ".pdf", "é" * 125 + ".pdf"),  # 2 bytes each; no half character
        ("🎒" * 100 + ".jpeg", "🎒" * 62 + ".jpeg"),  # 4 bytes each
        ("b" * 300, "b" * 255),
        ("x." + "y" * 300, "x." + "y" * 253),  # a 301-byte "extension" is not kept
    ],
)
def test_safe_filename_truncates_to_255_bytes(given: str, kept: str) -> None:
    result = safe_filename(given)
    assert result == kept
    assert len(result.encode("utf-8")) <= MAX_FILENAME_BYTES
