"""The ``remote`` agent: a ``relay agent`` process elsewhere dials the target.

The gateway opens a WebSocket to the agent's ``/agent`` (``Authorization:
Bearer <token>``), sends the validated request as the first text message and
reads the agent's first answer (``connected`` or ``error``).  From then on the
link *is* the session's target hop: the pumps relay frames over it unchanged,
and on the agent the link is the client hop of an ordinary session, so close
codes and reasons cross both hops as they are.

The link is the only thing between a client and a dead agent, so its socket
gets TCP keepalive and ``TCP_USER_TIMEOUT``: a link that silently stops
carrying packets is declared lost within seconds, not after minutes of TCP
retransmission.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio
from trio_websocket import (
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    open_websocket_url,
)

from relay.agents.base import plain_request
from relay.agents.health import Health, probe
from relay.browser.profiles import session_profile
from relay.converter import InputError, loads_json, structure
from relay.dataplane.hop import RECEIVE_SIZE, adopt_socket
from relay.dial import DialSettings, TargetConnection, os_error_text, start_tls, upgrade
from relay.keepalive import set_keepalive
from relay.wire.closecodes import Outcome, SessionError
from relay.wire.connect import ConnectRequest, TargetURL, parse_target_url
from relay.wire.frames import CLOSE, PING, PONG, TEXT, FrameReader, Violation, encode_frame

__all__ = [
    "LINK_TIMEOUT",
    "LinkAnswer",
    "RemoteAgent",
    "health_url_of",
    "keep_link_alive",
    "link_message",
]

# Seconds of silence after which a link whose peer vanished counts as lost.
LINK_TIMEOUT = 5.0
# How much longer than its own dial timeout the gateway waits for the agent's answer.
ANSWER_GRACE = 5.0
MAX_ANSWER = 64 * 1024
# Outcomes an agent may report as they are; anything else is the agent's own failure.
_PASSED_THROUGH = {Outcome.TARGET_FAILED, Outcome.TARGET_NOT_ALLOWED, Outcome.AGENT_FAILED}


def keep_link_alive(stream: trio.abc.Stream, timeout: float = LINK_TIMEOUT) -> None:
    """Bound how long a silently dropped link goes unnoticed (Linux socket options)."""
    seconds = max(2, int(timeout))
    idle = seconds // 2
    # Probe after `idle` quiet seconds, once a second; data unacknowledged for
    # `seconds` also ends the link.
    set_keepalive(stream, idle=idle, interval=1, probes=seconds - idle, user_timeout=seconds)


def link_message(
    request: ConnectRequest, source_address: str | None = None, impersonate: str | None = None
) -> str:
    """The first message on a link: the connect message's shape, no API key.

    Cookies are already merged into the ``Cookie`` header, so the agent
    validates and dials exactly what the gateway validated.  ``impersonate``
    is the browser profile the agent dials with (None: the agent's own).
    """
    fields: dict[str, object] = {
        "url": request.url,
        "headers": dict(request.headers),
        "idle_timeout": request.idle_timeout,
    }
    if source_address is not None:
        fields["source_address"] = source_address
    if impersonate is not None:
        fields["impersonate"] = impersonate
    return json.dumps(fields)


@attrs.frozen
class LinkAnswer:
    """The agent's first answer: ``connected`` or ``error`` (with the outcome and status)."""

    type: str
    status: int | None = None
    node_id: str | None = None
    message: str | None = None
    outcome: str | None = None

    def error(self, slug: str) -> SessionError:
        """The failure this answer reports."""
        try:
            outcome = Outcome(self.outcome)
        except ValueError:
            outcome = Outcome.AGENT_FAILED
        if outcome not in _PASSED_THROUGH:
            outcome = Outcome.AGENT_FAILED
        return SessionError(outcome, self.message or f"Agent {slug} failed", self.status)


def health_url_of(url: str) -> str:
    """The agent's health endpoint next to its link endpoint (``/agent`` → ``/agent/health``)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/health", "", ""))


@attrs.define
class RemoteAgent:
    """A ``relay agent`` at ``url``; ``source_address`` is passed on for its target dials."""

    slug: str
    country: str | None
    node_id: str
    url: str
    token: str = attrs.field(repr=False)
    settings: DialSettings
    ssl_context: ssl.SSLContext = attrs.field(factory=ssl.create_default_context, repr=False)
    source_address: str | None = None
    health: Health = attrs.Factory(Health)
    health_interval: float = 10.0
    health_timeout: float = 5.0
    health_url: str | None = None
    kind: str = "remote"
    # The browser profile the agent dials with; "none" leaves it to the agent's own.
    impersonate: str = "none"
    allow_impersonate: bool = False  # whether a session may choose its own
    _link: TargetURL = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        link = parse_target_url(self.url)
        if link is None:
            raise ValueError(f"agent {self.slug}: url must be ws:// or wss://")
        self._link = link

    @property
    def healthy(self) -> bool:
        """Selectable unless its last health check failed."""
        return self.health.selectable

    def _fail(self, what: str) -> SessionError:
        return SessionError(Outcome.AGENT_FAILED, f"Agent {self.slug} {what}")

    async def _open_link(self) -> TargetConnection:
        """TCP, TLS for ``wss://``, and the upgrade with the token: the link, answerless."""
        link = self._link
        try:
            tcp = await trio.open_tcp_stream(link.host, link.port)
        except OSError as exc:
            raise self._fail(f"unreachable ({os_error_text(exc)})") from None
        stream: trio.abc.Stream = tcp
        sock: socket.socket | None = None
        try:
            keep_link_alive(tcp)
            if not link.secure:
                # A plain link takes the pumps' direct-socket path, like a ws:// target.
                stream, sock = adopt_socket(tcp)
            else:
                stream = await start_tls(
                    tcp,
                    link.host,
                    self.ssl_context,
                    peer=f"agent {self.slug}",
                    outcome=Outcome.AGENT_FAILED,
                )
            headers = (("Authorization", f"Bearer {self.token}"),)
            try:
                connection = await upgrade(stream, plain_request(self.url, headers))
                return attrs.evolve(connection, sock=sock)
            except SessionError as exc:
                if exc.status in (401, 403):
                    raise self._fail(f"refused the gateway's token (HTTP {exc.status})") from None
                if exc.status is not None:
                    raise self._fail(f"refused the link (HTTP {exc.status})") from None
                raise self._fail(f"link handshake failed ({exc.message})") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _answer(self, stream: trio.abc.Stream, pending: bytes) -> tuple[LinkAnswer, bytes]:
        """Read the agent's first text message; returns it and the bytes after it."""
        reader = FrameReader(from_client=False, max_frame=MAX_ANSWER)
        reader.feed(pending)
        while True:
            frame = reader.next_frame()
            if frame is None:
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    raise self._fail("closed the link before answering")
                reader.feed(data)
                continue
            if isinstance(frame, Violation):
                raise self._fail(f"broke the link protocol ({frame.reason})")
            if frame.opcode in (PING, PONG):
                continue
            if frame.opcode == CLOSE:
                raise self._fail("closed the link before answering")
            if frame.opcode != TEXT or not frame.fin:
                raise self._fail("sent an unexpected first frame")
            try:
                answer = structure(
                    loads_json(frame.payload, what="agent answer"), LinkAnswer, what="agent answer"
                )
            except InputError as exc:
                raise self._fail(f"sent an invalid answer ({exc})") from None
            return answer, reader.take_buffered()

    async def open(self, request: ConnectRequest) -> TargetConnection:
        """Hand ``request`` to the agent; the link, once the agent's target answered 101."""
        browser = session_profile(
            self.slug, self.impersonate, self.allow_impersonate, request.impersonate
        )
        stream: trio.abc.Stream | None = None
        answered = False
        with trio.move_on_after(self.settings.timeout + ANSWER_GRACE):
            try:
                with trio.fail_after(self.settings.timeout):
                    link = await self._open_link()
                stream = link.stream
                chosen = browser.name if browser is not None else request.impersonate
                message = link_message(request, self.source_address, chosen).encode()
                await stream.send_all(encode_frame(TEXT, message, mask=os.urandom(4)))
                answer, trailing = await self._answer(stream, link.trailing)
                answered = True
            except trio.TooSlowError:
                raise self._fail(
                    f"did not accept the link within {self.settings.timeout:g} s"
                ) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._fail("dropped the link") from None
            finally:
                if not answered and stream is not None:
                    await trio.aclose_forcefully(stream)
        if not answered:
            raise self._fail("did not answer in time")
        assert stream is not None
        if answer.type != "connected":
            await trio.aclose_forcefully(stream)
            raise answer.error(self.slug)
        # The agent keeps the idle deadline: it sees target frames first.
        return TargetConnection(
            stream, answer.status or 101, trailing, sock=link.sock, idle_handled=True
        )

    async def check(self) -> None:
        """A round trip to the agent's health endpoint; with ``health_url``, a dial too."""
        headers = [(b"authorization", f"Bearer {self.token}".encode())]
        try:
            async with open_websocket_url(
                health_url_of(self.url),
                self.ssl_context if self._link.secure else None,
                extra_headers=headers,
                connect_timeout=self.health_timeout,
                disconnect_timeout=self.health_timeout,
            ) as ws:
                text = await ws.get_message()
        except ConnectionRejected as exc:
            if exc.status_code in (401, 403):
                raise self._fail(f"refused the gateway's token (HTTP {exc.status_code})") from None
            raise self._fail(f"refused the health check (HTTP {exc.status_code})") from None
        except ConnectionTimeout:
            raise self._fail("did not accept the health check in time") from None
        except HandshakeError as exc:  # trio-websocket's wrapper of the network error
            cause = exc.__cause__
            detail = os_error_text(cause) if isinstance(cause, OSError) else "connection failed"
            raise self._fail(f"unreachable ({detail})") from None
        data = loads_json(text, what="agent health answer")
        if not isinstance(data, dict) or data.get("type") != "healthy":
            raise self._fail("answered the health check with something else")
        self.health.reported = {
            name: data[name] for name in ("slug", "country", "node_id") if name in data
        }
        if self.health_url is not None:
            await probe(self, self.health_url)
