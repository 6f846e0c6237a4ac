"""The ways an outbound fetch is refused or fails.

Each is a `FetchError`, an ``InputError``: the URL came from the user, so a URL we cannot
or will not fetch is bad input, and the task fails with failCode "400". Their messages
name the host as the URL wrote it, never an address it resolved to.
"""

from __future__ import annotations

from bananastand.errors import InputError


class FetchError(InputError):
    """An outbound fetch was refused or failed; the task fails with failCode "400"."""


class BlockedAddressError(FetchError):
    """The URL's host is (or resolves to) an address the policy does not allow."""


class TooLargeError(FetchError):
    """The body is larger than `FetchPolicy.max_bytes`."""


class FetchTimeoutError(FetchError):
    """The fetch took longer than its time cap (connect, or the whole fetch)."""


class UnsupportedMediaError(FetchError):
    """The body is not an image type we accept (decided by magic bytes)."""
