"""Where the service may send requests of its own (webhooks): public addresses only,
unless an operator allows more.

A URL whose host is, or resolves to, a loopback, private, link-local (169.254.0.0/16,
fe80::/10, which hold the cloud metadata endpoints 169.254.169.254 and fd00:ec2::254),
unspecified, multicast, reserved or otherwise non-global address is refused, unless an
entry of the allow-list (`PDP_WEBHOOK_ALLOW_HOSTS`: IP addresses, CIDR networks or exact
host names) covers it. It is checked when the URL is configured (an address written in
the URL, `localhost`) and again at every delivery on the addresses the name resolves to
then, and the request goes to the very address that was checked (so a name that resolves
to a public address when checked and to an internal one a moment later cannot slip
through: DNS rebinding).

An address is public only if it is globally routable and so is every IPv4 address it
carries: an IPv4-mapped (::ffff:0:0/96) or NAT64 (64:ff9b::/96) address is judged by its
IPv4 address, a 6to4 one (2002::/16) by both, and Teredo (2001::/32) is refused. Python's
`is_global` is not enough alone: 2002:a9fe:a9fe:: (169.254.169.254 in 6to4) and
192.0.0.192 passed it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Named apart for the message; all of them are non-global anyway.
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("192.0.0.192"))
# Not globally reachable (IANA special-purpose registries), though Python's tables may
# say so: the IETF protocol assignments (192.0.0.192 is a cloud's metadata address), the
# old 6to4 relay anycast, local-use NAT64 (RFC 8215), SRv6 SIDs (RFC 9602) and the
# IPv6 documentation range of RFC 9637.
NOT_GLOBAL: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.0/24", "192.88.99.0/24", "64:ff9b:1::/48", "5f00::/16", "3fff::/20"))
# IPv6 forms that carry an IPv4 address (RFC 6052 NAT64, RFC 3056 6to4, RFC 4380 Teredo).
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
TEREDO = ipaddress.IPv6Network("2001::/32")


class EgressRefused(ValueError):
    """A URL the service may not send to."""


@dataclass(frozen=True)
class AllowList:
    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """IP addresses and CIDR networks (`10.20.0.0/16`, `::1`), or exact host names."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip()
            if not text:
                raise ValueError("an empty entry")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            name = text.lower().rstrip(".")
            if not all(part and len(part) <= 63 and all(c.isalnum() or c == "-" for c in part)
                       for part in name.split(".")):
                raise ValueError(f"{entry!r} is neither an address, a network nor a host name")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def covers(self, address: Address) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


def refusal(address: Address) -> str | None:
    """Why a request must not go to `address` unless allowed; None for a public one: one
    that is globally routable and whose embedded IPv4 address, if it has one, is too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in TEREDO:  # a tunnel through the IPv4 addresses it embeds
            return "a Teredo address"
        # IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96) addresses reach their
        # IPv4 address: it alone decides. A 6to4 one (2002::/16) must pass both.
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in NAT64 else None)
        if embedded is not None:
            why = refusal(embedded)
            return f"{why} ({address} holds {embedded})" if why else None
        if address.sixtofour is not None and (why := refusal(address.sixtofour)):
            return f"{why} ({address} holds {address.sixtofour})"
    if address in METADATA:
        return "a cloud metadata address"
    if any(address.version == net.version and address in net for net in NOT_GLOBAL):
        return "not a public address"
    for test, what in ((address.is_unspecified, "the unspecified address"),
                       (address.is_loopback, "a loopback address"),
                       (address.is_link_local, "a link-local address"),
                       (address.is_multicast, "a multicast address"),
                       (address.is_private, "a private address"),
                       (address.is_reserved, "a reserved address"),
                       (not address.is_global, "not a public address")):
        if test:
            return what
    return None


def literal_address(host: str) -> Address | None:
    """The address a URL's host names by itself: an IP literal, also the short and
    numeric IPv4 forms a resolver would read as one (`127.1`, `2130706433`, `0x7f.1`)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def url_host(url: str) -> tuple[str, int]:
    """The host (lower case, no brackets) and port of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EgressRefused(f"{url!r}: must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise EgressRefused(f"{url!r}: may not carry a user or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise EgressRefused(f"{url!r}: {error}") from None
    return parts.hostname.rstrip("."), port


def check_url(url: str, allow: AllowList) -> None:
    """At configuration: refuse a URL whose host is a forbidden address by itself (or a
    name that is loopback by definition: `localhost`, `*.localhost`)."""
    host, _ = url_host(url)
    if host in allow.hosts:
        return
    address = literal_address(host)
    if address is None and (host == "localhost" or host.endswith(".localhost")):
        address = ipaddress.ip_address("127.0.0.1")
    if address is not None and not allow.covers(address):
        why = refusal(address)
        if why:
            raise EgressRefused(f"{url!r}: {host} is {why}; allow it in "
                                "PDP_WEBHOOK_ALLOW_HOSTS if it is meant")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                         type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def checked_addresses(host: str, port: int, allow: AllowList,
                            resolve: Resolver = system_resolver) -> Sequence[Address]:
    """At delivery: the addresses `host` resolves to now, every one of them allowed;
    EgressRefused if any is not (or none is found)."""
    address = literal_address(host)
    if address is not None:
        found: list[Address] = [address]
    else:
        try:
            found = [ipaddress.ip_address(a.split("%")[0]) for a in await resolve(host, port)]
        except (OSError, ValueError) as error:
            raise EgressRefused(f"{host}: cannot be resolved: {error}") from None
    if not found:
        raise EgressRefused(f"{host}: resolves to no address")
    if host in allow.hosts:
        return found
    for each in found:
        why = None if allow.covers(each) else refusal(each)
        if why:
            raise EgressRefused(f"{host} resolves to {each}, {why}")
    return found
