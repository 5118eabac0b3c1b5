"""Opening the target WebSocket: TCP to a checked address, TLS for ``wss://``,
then the upgrade request.  Every failure becomes a :class:`SessionError` that
names the stage and cause, for the client's error message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Sequence

import attrs
import trio

from relay.browser.curltls import TLSFailure, ca_bundle, start_browser_tls
from relay.browser.deflate import InflatingStream, parse_agreement
from relay.browser.profiles import BrowserProfile, origin_of, upgrade_headers
from relay.dataplane.hop import RECEIVE_SIZE, adopt_socket
from relay.dataplane.tls import open_tls
from relay.keepalive import hop_keepalive
from relay.targets import Resolver, TargetPolicy, resolve_checked, system_resolver
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import ConnectRequest, TargetURL
from relay.wire.handshake import ClientHandshake, HandshakeError

_NOTSENT_LOWAT: int | None = getattr(socket, "TCP_NOTSENT_LOWAT", None)

__all__ = [
    "DialSettings",
    "TargetConnection",
    "connect_tcp",
    "open_target",
    "os_error_text",
    "start_target_tls",
    "start_tls",
    "upgrade",
]


@attrs.frozen
class TargetConnection:
    """A target WebSocket after its 101: the stream and frame bytes already read."""

    stream: trio.abc.Stream
    status: int
    trailing: bytes
    sock: socket.socket | None = None  # the stream's socket, for the pumps' direct calls
    # The far end enforces the request's idle timeout itself (a remote agent does).
    idle_handled: bool = False


@attrs.frozen
class DialSettings:
    """What every dial needs from the gateway's configuration."""

    policy: TargetPolicy = attrs.field(factory=TargetPolicy)
    timeout: float = 10.0
    ssl_context: ssl.SSLContext = attrs.field(factory=ssl.create_default_context)
    resolver: Resolver = system_resolver
    max_response_head: int = 64 * 1024
    keepalive: float = 0.0  # [server] tcp_keepalive for the target connection


async def connect_tcp(
    addresses: Sequence[str], port: int, *, source_address: str | None = None
) -> trio.SocketStream:
    """Connect to the first address that answers, in resolver order."""
    last: OSError | None = None
    for address in addresses:
        try:
            return await _connect(address, port, source_address)
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


async def _connect(address: str, port: int, source_address: str | None) -> trio.SocketStream:
    """One connect to an address literal (resolved and checked already).

    ``trio.open_tcp_stream`` would resolve it again and run the attempt in a
    task of its own nursery; one address needs neither.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if source_address is not None:
            # The port is picked at connect time, per destination, not at bind
            # time from the whole ephemeral range.
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            await sock.bind((source_address, 0))
        await sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _connect_plain(
    addresses: Sequence[str], port: int
) -> tuple[trio.SocketStream, socket.socket]:
    """:func:`connect_tcp` without a source address, straight to what the pumps use:
    the stream and its stdlib socket, as :func:`adopt_socket` would give them.

    The stdlib socket is connected here (non-blocking, then a wait until
    writable), so the session does not build a Trio socket and stream only to
    detach them again; failures read as Trio's do.  IPv6 literals take
    :func:`connect_tcp` (Trio normalises their address tuple in its messages).
    """
    last: OSError | None = None
    for address in addresses:
        try:
            if ":" in address:
                return _adopt_plain(await _connect(address, port, None))
            raw = await _connect_raw(address, port)
        except OSError as exc:
            last = exc
            continue
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
        if _NOTSENT_LOWAT is not None:
            # As adopt_socket does: the system's send low-water mark, not Trio's 16 KiB.
            raw.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, 0)
        return stream, raw
    assert last is not None
    raise last


async def _connect_raw(address: str, port: int) -> socket.socket:
    """A non-blocking stdlib socket connected to an IPv4 literal; closed on failure."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        raw.setblocking(False)
        waiting = False
        try:
            raw.connect((address, port))
        except BlockingIOError:
            waiting = True
        if waiting:
            await trio.lowlevel.wait_writable(raw)
            _check_connected(raw, address, port)
    except BaseException:
        raw.close()
        raise
    return raw


def _check_connected(raw: socket.socket, address: str, port: int) -> None:
    err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        where = (address, port)
        raise OSError(err, f"Error connecting to {where!r}: {os.strerror(err)}")


def _adopt_plain(stream: trio.SocketStream) -> tuple[trio.SocketStream, socket.socket]:
    adopted, sock = adopt_socket(stream)
    assert isinstance(adopted, trio.SocketStream)
    assert sock is not None
    return adopted, sock


def _root_cause(exc: BaseException) -> BaseException:
    """The first underlying error: trio reports failed connects as a group cause."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
            continue
        exc, cause = cause, cause.__cause__
    return exc


def os_error_text(exc: OSError) -> str:
    """The underlying cause of a failed connect, e.g. ``Connection refused``."""
    root = _root_cause(exc)
    code = getattr(root, "errno", None)
    if isinstance(code, int):
        return os.strerror(code)  # trio's own text repeats the address
    return getattr(root, "strerror", None) or str(root) or type(root).__name__


def _tcp_error(target: TargetURL, exc: OSError) -> SessionError:
    where = f"{target.host}:{target.port}"
    root = _root_cause(exc)
    if (
        isinstance(root, ConnectionRefusedError)
        or getattr(root, "errno", None) == errno.ECONNREFUSED
    ):
        return SessionError(Outcome.TARGET_FAILED, f"Target connection refused: {where}")
    detail = getattr(root, "strerror", None) or str(root) or type(root).__name__
    return SessionError(Outcome.TARGET_FAILED, f"Target unreachable: {where} ({detail})")


async def start_tls(
    stream: trio.abc.Stream,
    host: str,
    context: ssl.SSLContext,
    *,
    peer: str = "target",
    outcome: Outcome = Outcome.TARGET_FAILED,
) -> trio.abc.Stream:
    """TLS over ``stream`` to ``host``; a failure names ``peer`` and the TLS error.

    On plain TCP the connection is driven by :mod:`relay.dataplane.tls` (the pumps'
    fast TLS path); over a proxy's stream, by ``trio.SSLStream``.

    On failure the caller still owns (and closes) ``stream``.
    """
    try:
        tls = await open_tls(stream, context, server_side=False, server_hostname=host)
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
        raise SessionError(
            outcome, f"TLS handshake with {peer} failed: {detail or cause or exc}"
        ) from None
    return tls


async def start_target_tls(
    stream: trio.abc.Stream,
    target: TargetURL,
    settings: DialSettings,
    browser: BrowserProfile | None = None,
) -> trio.abc.Stream:
    """TLS to a ``wss://`` target: Python's, or ``browser``'s ClientHello (relay/browser).

    On failure the caller still owns (and closes) ``stream``; on success a
    browser-TLS stream replaces it (curl owns a duplicate of its socket) and
    ``stream`` is closed here.
    """
    if browser is None:
        return await start_tls(stream, target.host, settings.ssl_context)
    if type(stream) is not trio.SocketStream:
        raise SessionError(
            Outcome.TARGET_FAILED,
            "TLS handshake with target failed: a browser's TLS needs a plain TCP connection",
        )
    try:
        tls = await start_browser_tls(
            stream, target.host, target.port, browser, ca_bundle(settings.ssl_context)
        )
    except TLSFailure as exc:
        raise SessionError(
            Outcome.TARGET_FAILED, f"TLS handshake with target failed: {exc}"
        ) from None
    stream.socket.close()  # curl works on its own duplicate of the socket
    return tls


def _deflate_ok(value: bytes) -> bool:
    return parse_agreement(value) is not None


async def upgrade(
    stream: trio.abc.Stream,
    request: ConnectRequest,
    *,
    max_response_head: int = 64 * 1024,
    browser: BrowserProfile | None = None,
) -> TargetConnection:
    """Send the upgrade request over ``stream`` and wait for the 101.

    With ``browser`` the request is laid out as that browser sends it.
    """
    target = request.target
    layout = None
    if browser is not None:
        origin = origin_of(target.secure, target.host_header)

        def layout(key: bytes) -> list[tuple[bytes, bytes]]:
            return upgrade_headers(
                browser,
                host=target.host_header,
                origin=origin,
                key=key,
                client_headers=request.upgrade_headers(),
            )

    handshake = ClientHandshake(
        target.host_header,
        target.resource,
        request.upgrade_headers(),
        max_response_head=max_response_head,
        layout=layout,
        extension_ok=None if browser is None else _deflate_ok,
    )
    try:
        await stream.send_all(handshake.request_bytes)
        while True:
            try:
                data = bytes(await stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            result = handshake.receive(data)
            if result is not None:
                agreed = dict(result.headers).get(b"sec-websocket-extensions")
                if agreed is not None:
                    # The target compresses (a browser's offer): the client, which
                    # negotiated nothing, gets inflated messages.
                    agreement = parse_agreement(agreed)
                    assert agreement is not None  # checked by _deflate_ok
                    inflating = InflatingStream(stream, agreement, result.trailing)
                    return TargetConnection(inflating, result.status, b"")
                return TargetConnection(stream, result.status, result.trailing)
    except HandshakeError as exc:
        text = str(exc)
        raise SessionError(Outcome.TARGET_FAILED, text[:1].upper() + text[1:], exc.status) from None
    except trio.BrokenResourceError:
        raise SessionError(
            Outcome.TARGET_FAILED, "Target closed the connection during the handshake"
        ) from None


async def open_target(
    request: ConnectRequest,
    settings: DialSettings,
    *,
    source_address: str | None = None,
    browser: BrowserProfile | None = None,
) -> TargetConnection:
    """Dial ``request``'s target directly from this process (as ``browser``, if given)."""
    target = request.target
    stage = "resolving the target"
    stream: trio.abc.Stream | None = None
    sock: socket.socket | None = None
    with trio.move_on_after(settings.timeout):
        try:
            addresses = await resolve_checked(
                target.host, target.port, settings.policy, settings.resolver
            )
            stage = "connecting to the target"
            try:
                if source_address is None:
                    stream, sock = await _connect_plain(addresses, target.port)
                else:
                    stream = await connect_tcp(
                        addresses, target.port, source_address=source_address
                    )
                    stream, sock = adopt_socket(stream)
            except OSError as exc:
                raise _tcp_error(target, exc) from None
            hop_keepalive(stream, settings.keepalive)
            if target.secure:
                stage = "the TLS handshake with the target"
                stream = await start_target_tls(stream, target, settings, browser)
            stage = "the WebSocket handshake with the target"
            connection = await upgrade(
                stream, request, max_response_head=settings.max_response_head, browser=browser
            )
            # Under TLS the socket carries ciphertext, and an inflated stream is not
            # the socket's bytes: the pumps must use the stream.
            direct = not target.secure and connection.stream is stream
            # Built directly: attrs.evolve introspects the class on every call.
            return TargetConnection(
                connection.stream,
                connection.status,
                connection.trailing,
                sock if direct else None,
                connection.idle_handled,
            )
        except BaseException:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise
    if stream is not None:
        await trio.aclose_forcefully(stream)
    raise SessionError(
        Outcome.TARGET_FAILED,
        f"Target connection timed out after {settings.timeout:g} s during {stage}",
    )
