"""Which target addresses may be dialed, and resolving names to checked addresses.

A name is resolved once; every address it resolves to is checked, and only
those checked addresses are dialed, so a second DNS answer cannot swap in a
forbidden one between check and connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from relay.closecodes import Outcome, SessionError

__all__ = ["Resolver", "TargetPolicy", "resolve_checked", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> addresses; replaceable so tests can resolve names without /etc/hosts.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve ``host`` with the system resolver (getaddrinfo, in a thread)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _not_public(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _not_public(address.ipv4_mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


@attrs.frozen
class TargetPolicy:
    """The ``[targets]`` rules applied to every resolved target address."""

    allow_private: bool = False

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be dialed, or None when it may."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "not an IP address"
        if self.allow_private:
            return None
        return _not_public(ip)


async def resolve_checked(
    host: str, port: int, policy: TargetPolicy, resolver: Resolver = system_resolver
) -> list[str]:
    """Resolve ``host`` and return its addresses, all of them allowed by ``policy``.

    Raises :class:`SessionError` when the name does not resolve or any address
    is refused (one forbidden answer taints the name: DNS can rotate).
    """
    try:
        ipaddress.ip_address(host)
        addresses: Sequence[str] = [host]
    except ValueError:
        try:
            addresses = await resolver(host, port)
        except OSError as exc:
            raise SessionError(
                Outcome.TARGET_FAILED,
                f"Target host could not be resolved: {host} ({exc.strerror or exc})",
            ) from None
    if not addresses:
        raise SessionError(Outcome.TARGET_FAILED, f"Target host could not be resolved: {host}")
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            raise SessionError(
                Outcome.TARGET_NOT_ALLOWED,
                f"Target address not allowed: {host} resolves to {reason} address {address}",
            )
    return list(addresses)
