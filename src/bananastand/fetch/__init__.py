"""The one SSRF-safe outbound HTTP client of bananastand.

Every request this server makes to a URL that came from outside goes through
`SafeFetcher`: a task's ``image_input`` URLs (``inputs``), the file-url upload
(``files``), both with `SafeFetcher.fetch_image`, and the webhook callbacks (``webhooks``),
with `SafeFetcher.post`. A URL from a user must never let that user reach what only the
server can reach: cloud metadata endpoints, the database, admin consoles on localhost,
the office LAN.

The rules, all enforced in this package and nowhere else:

* Resolve the host **once**; refuse if **any** resolved address is neither globally
  routable (``addresses.is_public_address``) nor allowed, then connect to the very
  address that was checked. Checking one lookup and connecting after a second one is the
  classic DNS-rebinding hole, so the check lives inside the network backend's
  ``connect_tcp``, the only place that opens sockets. Every connection, redirects
  included, passes through it.
* Keep ``Host`` and TLS SNI / certificate checks on the host name: the URL is never
  rewritten, only the socket is opened to the checked IP literal.
* Only ``http`` and ``https``, at every hop. A GET follows at most ``max_redirects``
  redirects, each hop checked as the first; a POST follows none (its body is never
  replayed to another host) and returns the 3xx.
* Ignore proxy environment variables (a proxy would do the resolving for us, unchecked),
  and keep no cookies (one fetcher serves every tenant): requests go to the transport
  directly, without an ``httpx.AsyncClient`` and its environment or cookie jar.
* Stream the body with a byte cap and the whole call with a wall-clock cap. An image's
  type comes from its magic bytes (``image_types``), never from the server's
  ``Content-Type``, and a compressed (``Content-Encoding``) image is refused, not
  decoded; a callback's answer is kept up to `POST_RESPONSE_MAX_BYTES`.
* An operator allow-list (`FetchPolicy.allow`) of networks and host names lets a
  self-hosted deployment reach its own private hosts (and lets tests use loopback fakes).

Error messages name what the caller gave (the host as written in a URL), never what a
host name resolved to: an internal address must not leak through a task's failMsg.
The resolved addresses go to the log, for the operator.

The modules, in the order a request meets them: ``fetcher`` (`SafeFetcher`: redirects,
caps, reading the body), ``policy`` (which URLs and addresses may be reached),
``transport`` (httpx's request and response over an httpcore pool) and ``backend``
(resolve, check, connect); ``errors`` holds the refusals, each a `FetchError`, which fails
a task with failCode "400".
"""

from bananastand.fetch.backend import Resolver
from bananastand.fetch.errors import (
    BlockedAddressError,
    FetchError,
    FetchTimeoutError,
    TooLargeError,
    UnsupportedMediaError,
)
from bananastand.fetch.fetcher import POST_RESPONSE_MAX_BYTES, FetchedImage, SafeFetcher
from bananastand.fetch.policy import FetchPolicy

__all__ = [
    "POST_RESPONSE_MAX_BYTES",
    "BlockedAddressError",
    "FetchError",
    "FetchPolicy",
    "FetchTimeoutError",
    "FetchedImage",
    "Resolver",
    "SafeFetcher",
    "TooLargeError",
    "UnsupportedMediaError",
]
