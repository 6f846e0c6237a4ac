"""The outcome codes of the wire contract, each number named once for server and client.

Every envelope answers HTTP 200; its ``code`` carries the outcome. The server's error tree
(``bananastand.errors``) has a class per refusal, raised to answer with that code; the
client's (``bananastand.client.errors``) has its own class per refusal, raised after
reading one. The two trees stay apart (one produces envelopes, the other carries what a
caller reads from them), but each class takes its ``code`` from `Code`, and each tree has
one class for every code of `REFUSALS`. Standard library only: the client imports this
without the server's dependencies.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class Code(IntEnum):
    """Every ``code`` an envelope carries."""

    OK = 200
    UNAUTHORIZED = 401  # a bad or missing API key
    INSUFFICIENT_CREDITS = 402
    NOT_FOUND = 404  # a task of another key too: never told apart from an unknown one
    VALIDATION = 422  # ``msg`` names the field and the rule
    RATE_LIMITED = 429  # with a ``Retry-After`` header
    MAINTENANCE = 455  # createTask refused for now; reads keep working
    SERVER_ERROR = 500
    GENERATION_FAILED = 501  # a callback's code for a task that ended in ``fail``
    FEATURE_DISABLED = 505  # e.g. a model switched off, or none configured


#: The codes that refuse a request, each with one error class in either tree. (``OK``
#: and ``GENERATION_FAILED`` are outcomes, not refusals: a callback reports a task's end
#: with one of them.)
REFUSALS: Final = tuple(code for code in Code if code not in (Code.OK, Code.GENERATION_FAILED))
