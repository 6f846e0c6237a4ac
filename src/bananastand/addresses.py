"""Which addresses an outbound request may reach: the rules every fetch is held to.

Anything not globally routable is refused (loopback, private, link-local, CGNAT, this
network, multicast, reserved, and the IPv6 forms that embed such an IPv4 address), unless
the operator's allow-list names its network or host. Kept apart from the HTTP client in
``fetch`` so that request validation (createTask) can judge a literal address without it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from bananastand.errors import ConfigurationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Ends every refusal of a private address: tells whoever runs the server what opens it.
ALLOW_HINT: Final = "(the server setting BANANASTAND_ALLOW_PRIVATE_NETWORKS can allow it)"

_V4_BLOCKED: Final = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "100.64.0.0/10",  # CGNAT shared space: is_global is False but is_private too
        "224.0.0.0/4",  # multicast: ipaddress calls it is_global
        "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast
    )
)

# IPv6 ranges refused outright, whatever they embed. ipaddress (3.11) reports several of
# them as is_global, which is why is_global alone is not enough.
_V6_BLOCKED: Final = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback, deprecated IPv4-compatible ::a.b.c.d
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): a private translator
        "2001::/32",  # Teredo: a tunnel relay, never a legitimate image host
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637), unknown to older ipaddress
        "5f00::/16",  # SRv6 SIDs, not globally reachable
        "fec0::/10",  # deprecated site-local, is_global in ipaddress
        "ff00::/8",  # multicast, is_global in ipaddress
    )
)
_V6_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_V6_SIIT: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_V6_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix
_V6_6TO4: Final = ipaddress.IPv6Network("2002::/16")


def _is_public_v4(addr: ipaddress.IPv4Address) -> bool:
    if any(addr in net for net in _V4_BLOCKED):
        return False
    if (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    ):
        return False
    return addr.is_global


def _low_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)


def is_public_address(ip: str | IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address an outbound fetch may reach.

    ``ipaddress``'s ``is_global`` is the base, with its quirks corrected (Python 3.11):
    it calls multicast, ``fec0::/10``, ``::a.b.c.d`` and most embedded-IPv4 forms global,
    and CGNAT ``100.64/10`` is neither private nor global. IPv6 forms that carry an IPv4
    address to a v4 host (IPv4-mapped ``::ffff:a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, NAT64
    ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by the IPv4 address inside, so
    ``::ffff:127.0.0.1`` is loopback. IPv6 outside ``2000::/3`` (all global unicast space
    ever allocated) is refused, as is any address with a zone (``%eth0``). Strings that
    are not IP addresses are not public.
    """
    if isinstance(ip, str):
        try:
            addr: IPAddress = ipaddress.ip_address(ip)
        except ValueError:
            return False
    else:
        addr = ip
    if isinstance(addr, ipaddress.IPv4Address):
        return _is_public_v4(addr)
    if addr.scope_id:  # scoped (fe80::1%eth0): link-local by definition
        return False
    if addr.ipv4_mapped is not None:
        return _is_public_v4(addr.ipv4_mapped)
    if addr in _V6_SIIT or addr in _V6_NAT64:
        return _is_public_v4(_low_v4(addr))
    if addr.sixtofour is not None and not _is_public_v4(addr.sixtofour):
        return False
    if any(addr in net for net in _V6_BLOCKED) or addr not in _V6_GLOBAL_UNICAST:
        return False
    if (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_site_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    ):
        return False
    return addr.is_global


# --------------------------------------------------------------------------- allow-list

_HOSTNAME_RE: Final = re.compile(
    r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


_LEGACY_V4_RE: Final = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def parse_ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one in any spelling a resolver accepts:
    ``[::1]``, ``127.0.0.1``, and the legacy IPv4 forms ``127.1``, ``0x7f000001``,
    ``2130706433``, ``0177.0.0.1`` (which ``inet_aton`` and so ``getaddrinfo`` take)."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if _LEGACY_V4_RE.match(name):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return None
    return None


def literal_host(url: str) -> IPAddress | None:
    """The IP address a URL names literally, or None for a host name (or no URL)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return parse_ip_literal(host) if host else None


@dataclass(frozen=True, slots=True)
class AllowList:
    """The parsed `FetchPolicy.allow`: networks, exact names, and ``*.`` name suffixes."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".corp.example" for "*.corp.example"

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = _normalize_host(entry)
            if "/" in name or ":" in name or not _HOSTNAME_RE.match(name):
                raise ConfigurationError(
                    f"fetch allow-list entry {raw!r} is neither a network nor a host name"
                )
            if name.startswith("*."):
                suffixes.append(name[1:])
            else:
                names.add(name)
        return cls(tuple(networks), frozenset(names), tuple(suffixes))

    def allows_name(self, host: str) -> bool:
        name = _normalize_host(host)
        return name in self.names or any(name.endswith(sfx) for sfx in self.suffixes)

    def allows_address(self, addr: IPAddress) -> bool:
        # ::ffff:a.b.c.d *is* a.b.c.d on a dual-stack socket, so an allowed v4 network
        # covers it. Other embedded forms (6to4, NAT64) go to a relay, not to the v4 host.
        candidates: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates.append(addr.ipv4_mapped)
        return any(cand in net for cand in candidates for net in self.networks)


def is_loopback_host(host: str) -> bool:
    """Whether a listening address is this machine only: ``localhost``, 127.0.0.0/8, ::1."""
    if _normalize_host(host) == "localhost":
        return True
    addr = parse_ip_literal(host)
    return addr is not None and addr.is_loopback


def _unmapped(addr: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` is a.b.c.d (on a dual-stack socket it reaches that very host)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class HostList:
    """Hosts an operator names by what a URL says, not by where it resolves: exact names,
    ``.domain`` for a domain and every name below it, and IP addresses (matched in any
    spelling). Case and a trailing dot do not matter."""

    names: frozenset[str]
    domains: tuple[str, ...]  # "proxy.example" for ".proxy.example"
    addresses: frozenset[IPAddress]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostList:
        """Raises ValueError for an entry that is none of the three (``*.x``, a URL...)."""
        names: set[str] = set()
        domains: list[str] = []
        addresses: set[IPAddress] = set()
        for raw in entries:
            literal = parse_ip_literal(raw)
            if literal is not None:
                addresses.add(_unmapped(literal))
                continue
            name = _normalize_host(raw)
            domain = name.startswith(".")
            name = name.removeprefix(".")
            if not name or name.startswith("*") or not _HOSTNAME_RE.match(name):
                raise ValueError(
                    f"{raw!r} is not a host name, a .domain (for the domain and every name "
                    "below it) or an IP address"
                )
            if domain:
                domains.append(name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(domains), frozenset(addresses))

    def matches(self, host: str) -> bool:
        literal = parse_ip_literal(host)
        if literal is not None:
            return _unmapped(literal) in self.addresses
        name = _normalize_host(host)
        return name in self.names or any(
            name == domain or name.endswith("." + domain) for domain in self.domains
        )
