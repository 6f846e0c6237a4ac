"""The client's defaults that its command line shows before it talks to anyone: in a module
of their own, so that ``bananastand --help`` and the admin commands need none of the SDK
(httpx and the models, ~0.1 s of every start) to offer them."""

from __future__ import annotations

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: A 4K render can take minutes upstream, and a task may queue behind others first.
DEFAULT_WAIT_TIMEOUT_S = 15 * 60
