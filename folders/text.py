"""Free text from users (names, titles, reasons, purposes): the one rule for cleaning it."""

from __future__ import annotations

from folders.errors import InvalidInput


def clean_text(value: str, field: str, *, max_length: int, required: bool = True) -> str | None:
    """Strip and bound a free-text value; InvalidInput naming ``field`` when bad."""
    cleaned = " ".join(value.split()) if value else ""
    if not cleaned:
        if required:
            raise InvalidInput(f"The {field} is required.")
        return None
    if len(cleaned) > max_length:
        raise InvalidInput(f"The {field} is longer than {max_length} characters.")
    if any(ord(c) < 32 for c in cleaned):
        raise InvalidInput(f"The {field} contains control characters.")
    return cleaned
