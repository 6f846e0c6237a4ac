"""What a database column can hold, checked before a caller's value is written.

Python's ``int`` has no bound and its ``str`` may hold lone surrogates (a command-line
argument that was not UTF-8 arrives as one); the database takes neither, and a write that
fails is a 500 or a traceback. The domain checks first and refuses with a ValidationError
naming the field, so the HTTP API and the CLI both answer one line.
"""

from __future__ import annotations

from bananastand.errors import ValidationError

#: An INTEGER column (32-bit on PostgreSQL).
INT32_MAX = 2**31 - 1
#: A BIGINT column.
INT64_MAX = 2**63 - 1
#: The ``String(200)`` name columns.
NAME_CHARS = 200
#: The last millisecond of the year 9999: later instants have no date to show them as.
LATEST_MS = 253_402_300_799_999


def check_whole(field: str, value: object, *, maximum: int) -> int:
    """``value`` if it is an int from 0 to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValidationError(f"{field}: must be a whole number from 0 to {maximum}")
    return value


def check_text(field: str, value: str, *, max_chars: int | None = None) -> str:
    """``value`` if it is valid Unicode (UTF-8 has no encoding of a lone surrogate) and at
    most ``max_chars`` long."""
    if max_chars is not None and len(value) > max_chars:
        raise ValidationError(f"{field}: must be at most {max_chars} characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValidationError(f"{field}: must be valid Unicode text") from None
    return value
