"""Which targets may be dialed, and resolving names to checked addresses.

The policy is pure (no I/O) so every place that dials a target applies the same
rules: this process's ``direct`` agent today, proxy and remote agents wherever
they dial.  The rules, in order:

1. the port must be allowed (``ports``; empty means any port);
2. a host matching a ``deny`` pattern is refused before it is resolved;
3. every address the name resolves to is checked: one in a ``deny`` network is
   refused; one that ``allow`` covers (by network, or because the host matches
   an ``allow`` pattern) is accepted; with ``allow_only`` nothing else is; with
   ``allow_private`` everything else is; otherwise only public addresses are
   (not loopback, private, link-local, multicast, unspecified or reserved,
   IPv4 addresses embedded in IPv6 judged as what they embed).

:func:`resolve_checked` resolves a name once and returns only checked addresses,
and callers connect to those, so a second DNS answer cannot swap in a
forbidden one between check and connect (DNS rebinding).  An agent that dials
through a proxy must likewise hand the proxy a checked address, not the name.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import attrs
import trio

from relay.wire.closecodes import Outcome, SessionError

__all__ = [
    "HostPattern",
    "PortRange",
    "Resolver",
    "Rules",
    "TargetPolicy",
    "parse_port_range",
    "parse_rule",
    "resolve_checked",
    "system_resolver",
]

log = logging.getLogger("relay.targets")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> addresses; replaceable so tests can resolve names without /etc/hosts.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NOT_ALLOWED = "Target address not allowed: "
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_PASSED_MAX = 4096  # verdicts a policy keeps


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve ``host`` with the system resolver (getaddrinfo, in a thread)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:
        # getaddrinfo IDNA-encodes names and fails on empty or over-long labels.
        raise socket.gaierror(socket.EAI_NONAME, "not a valid host name") from None
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _normal_host(host: str) -> str:
    """Lower case, no trailing dot: ``Example.COM.`` and ``example.com`` are one host."""
    return host.lower().rstrip(".")


@attrs.frozen
class HostPattern:
    """``example.com`` (that name only) or ``*.example.com`` (any name below it)."""

    suffix: str
    wildcard: bool

    def matches(self, host: str) -> bool:
        """Whether ``host`` (a name, not an IP literal) matches."""
        host = _normal_host(host)
        if self.wildcard:
            return host.endswith("." + self.suffix)
        return host == self.suffix

    def __str__(self) -> str:
        return ("*." if self.wildcard else "") + self.suffix


def parse_rule(text: str) -> IPNetwork | HostPattern:
    """A ``deny``/``allow`` entry: a CIDR or address, or a host pattern.

    Raises :class:`ValueError` naming the entry when it is neither.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        pass
    name = _normal_host(text.strip())
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[2:]
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    labels = name.split(".")
    if not name or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{text!r} is neither a CIDR nor a host pattern (example.com, *.example.com)"
        )
    return HostPattern(name, wildcard)


@attrs.frozen
class Rules:
    """A list of networks and host patterns (one ``allow`` or ``deny`` list)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[HostPattern, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Rules:
        """Parse ``deny``/``allow`` entries; :class:`ValueError` for a bad one."""
        networks: list[IPNetwork] = []
        hosts: list[HostPattern] = []
        for entry in entries:
            rule = parse_rule(entry)
            if isinstance(rule, HostPattern):
                hosts.append(rule)
            else:
                networks.append(rule)
        return cls(tuple(networks), tuple(hosts))

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts)

    def match_host(self, host: str) -> bool:
        """Whether a name matches one of the host patterns."""
        return any(pattern.matches(host) for pattern in self.hosts)

    def match_address(self, address: IPAddress) -> bool:
        """Whether the address, or the IPv4 address it embeds, is in one of the networks."""
        forms = [address, *_embedded(address)]
        return any(form in network for form in forms for network in self.networks)


@attrs.frozen
class PortRange:
    """An inclusive range of allowed ports."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


def parse_port_range(value: int | str) -> PortRange:
    """``443``, ``"443"`` or ``"8000-8999"``; :class:`ValueError` otherwise."""
    text = str(value).strip()
    low_text, sep, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if sep else low
    except ValueError:
        raise ValueError(f"{value!r} is not a port or a range like '8000-8999'") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{value!r} is not a port range within 1-65535")
    return PortRange(low, high)


def _embedded(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to (mapped, 6to4, NAT64 well-known prefix)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.ipv4_mapped, address.sixtofour]
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ip for ip in found if ip is not None]


def _category(address: IPAddress) -> str | None:
    """Why ``address`` is not a public address, or None when it is."""
    embedded = _embedded(address)
    if isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped is not None or address in _NAT64
    ):
        # The IPv6 form is only a way of writing the IPv4 address: judge that.
        return _category(embedded[0])
    for ip in (address, *embedded):
        if ip.is_loopback:
            return "loopback"
        if ip.is_link_local:
            return "link-local"
        if ip.is_multicast:
            return "multicast"
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_private:
            return "private"
        if ip.is_reserved or not ip.is_global:
            return "reserved"
    return None


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@attrs.frozen
class TargetPolicy:
    """The ``[targets]`` rules; see the module docstring for their order.

    :meth:`target_refusal` and :meth:`address_refusal` return complete client
    messages (``Target address not allowed: …``); for a name they say what
    kind of address it resolved to but not the address, so the relay cannot
    be used to map private DNS.  :meth:`refusal` gives the bare reason.
    """

    allow_private: bool = False
    allow: Rules = attrs.Factory(Rules)
    deny: Rules = attrs.Factory(Rules)
    allow_only: bool = False
    ports: tuple[PortRange, ...] = ()  # empty: any port
    # Targets this policy has passed, with the addresses they resolved to.  The
    # rules are pure, so a verdict holds for as long as the policy does (a
    # reload builds a new one); only passes are kept, so every refusal is
    # judged and logged afresh.  Bounded: cleared when full.
    _passed: dict[tuple[str, int, tuple[str, ...]], bool] = attrs.field(
        factory=dict, init=False, eq=False, repr=False, hash=False
    )

    def passes(self, host: str, port: int, addresses: tuple[str, ...]) -> bool:
        """Whether ``host:port`` resolving to ``addresses`` passed :meth:`check` before."""
        return (host, port, addresses) in self._passed

    def target_refusal(self, host: str, port: int) -> str | None:
        """What refuses ``host:port`` before any name is resolved, or None."""
        if self.ports and not any(port in allowed for allowed in self.ports):
            return f"{_NOT_ALLOWED}port {port} is not allowed"
        if _literal(host) is None and self.deny.match_host(host):
            return f"{_NOT_ALLOWED}{host} is on the denylist"
        return None

    def refusal(self, address: str, *, host: str | None = None) -> str | None:
        """Why ``address`` may not be dialed, in a word or two, or None when it may.

        ``loopback``, ``private``, ``link-local``, ``multicast``, ``unspecified``,
        ``reserved``, ``denied``, ``not allowlisted`` or ``not an IP address``.
        ``host``, the name that resolved to it, lets ``allow`` host patterns apply.
        """
        ip = _literal(address)
        if ip is None:
            return "not an IP address"
        if self.deny.match_address(ip):
            return "denied"
        named = host is not None and _literal(host) is None
        if self.allow.match_address(ip) or (named and self.allow.match_host(host or "")):
            return None
        if self.allow_only:
            return "not allowlisted"
        if self.allow_private:
            return None
        return _category(ip)

    def address_refusal(self, host: str, address: str) -> str | None:
        """The client's message refusing ``address`` (which ``host`` resolved to), or None."""
        reason = self.refusal(address, host=host)
        if reason is None:
            return None
        if reason == "not allowlisted":
            return f"{_NOT_ALLOWED}{host} is not on the allowlist"
        if reason == "not an IP address":
            return f"{_NOT_ALLOWED}{host} resolves to something that is not an IP address"
        if _literal(host) is not None:
            # An address the client gave itself: naming it reveals nothing.
            return f"{_NOT_ALLOWED}{host} resolves to {reason} address {address}"
        return f"{_NOT_ALLOWED}{host} resolves to {_article(reason)} address"

    def check(self, host: str, port: int, addresses: Sequence[str]) -> None:
        """Raise :class:`SessionError` (``TARGET_NOT_ALLOWED``) unless every address passes."""
        key = (host, port, tuple(addresses))
        passed = self._passed
        if key in passed:
            return
        reason = self.target_refusal(host, port)
        for address in addresses if reason is None else ():
            reason = self.address_refusal(host, address)
            if reason is not None:
                # The operator may see what the client is not told.
                log.info("target refused: %s resolved to %s", host, address)
                break
        if reason is not None:
            raise SessionError(Outcome.TARGET_NOT_ALLOWED, reason)
        if len(passed) >= _PASSED_MAX:
            passed.clear()
        passed[key] = True


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


async def resolve_checked(
    host: str, port: int, policy: TargetPolicy, resolver: Resolver = system_resolver
) -> list[str]:
    """Resolve ``host`` and return its addresses, all of them allowed by ``policy``.

    Connect only to what this returns.  Raises :class:`SessionError` when the
    name does not resolve, or when the port, the name or any address is
    refused (one forbidden answer taints the name: DNS can rotate).
    """
    if policy.passes(host, port, (host,)):
        return [host]  # an address literal this policy has passed: nothing to resolve
    refused = policy.target_refusal(host, port)
    if refused is not None:
        raise SessionError(Outcome.TARGET_NOT_ALLOWED, refused)
    addresses: Sequence[str]
    if _literal(host) is not None:
        addresses = [host]
    else:
        try:
            addresses = await resolver(host, port)
        except OSError as exc:
            raise SessionError(
                Outcome.TARGET_FAILED,
                f"Target host could not be resolved: {host} ({exc.strerror or exc})",
            ) from None
    if not addresses:
        raise SessionError(Outcome.TARGET_FAILED, f"Target host could not be resolved: {host}")
    policy.check(host, port, addresses)
    return list(addresses)
