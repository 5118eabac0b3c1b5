"""TLS to a target with a browser's ClientHello: curl-impersonate (BoringSSL), driven from Trio.

Python's ``ssl`` (OpenSSL) cannot send Chrome's ClientHello; curl_cffi's
libcurl, built on BoringSSL with curl-impersonate's patches, can.  curl is
used here only for the TLS layer of a connection the relay already made:

- the relay connects TCP itself (directly, from ``source_address``, or
  through a SOCKS/HTTP proxy) with the code every dial uses, so addresses are
  checked, errors worded and proxies handled as they always are;
- curl gets a duplicate of that socket (``CURLOPT_OPENSOCKETFUNCTION``,
  ``CURL_SOCKOPT_ALREADY_CONNECTED``) and an ``https://`` URL with
  ``CURLOPT_CONNECT_ONLY``, HTTP/1.1 (so ALPN offers ``http/1.1`` alone, as
  Chrome does for WebSockets) and ``CURLOPT_CONNECT_TO`` the connected
  address (it never resolves a name: no DNS leaves the relay);
- the handshake runs on one process-wide multi handle, non-blocking: the
  task waits with ``trio.lowlevel.wait_readable``/``wait_writable`` on the
  socket curl says it needs (``curl_multi_waitfds``), no thread involved;
- then :class:`CurlTLSStream` is a ``trio.abc.Stream`` over
  ``curl_easy_send``/``curl_easy_recv`` (``CURLE_AGAIN`` → wait on the
  socket), so the relay's pumps take their generic stream path: frames,
  closes and backpressure exactly as over ``trio.SSLStream``.

curl_cffi's own bindings omit ``curl_easy_send``/``curl_easy_recv`` and
callback options, so a small cffi declaration opens the same shared library
(the symbols are exported by it) for those calls.
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
from typing import Any

import cffi  # type: ignore[import-untyped]
import trio
from curl_cffi import Curl
from curl_cffi import _wrapper as curl_wrapper
from curl_cffi.const import CurlECode, CurlHttpVersion, CurlOpt

from relay.browser.profiles import BrowserProfile

__all__ = ["CurlTLSStream", "TLSFailure", "ca_bundle", "start_browser_tls"]

_DECLARATIONS = """
typedef struct { int msg; void *easy_handle; union { void *whatever; int result; } data; } CURLMsg;
struct curl_waitfd { int fd; short events; short revents; };
int curl_easy_send(void *curl, const void *buffer, size_t buflen, size_t *n);
int curl_easy_recv(void *curl, void *buffer, size_t buflen, size_t *n);
int curl_easy_setopt(void *curl, int option, ...);
void *curl_slist_append(void *list, const char *text);
void curl_slist_free_all(void *list);
void *curl_multi_init(void);
int curl_multi_add_handle(void *multi, void *easy);
int curl_multi_remove_handle(void *multi, void *easy);
int curl_multi_perform(void *multi, int *running);
CURLMsg *curl_multi_info_read(void *multi, int *queued);
int curl_multi_timeout(void *multi, long *ms);
int curl_multi_waitfds(void *multi, struct curl_waitfd *fds, unsigned int size,
                       unsigned int *count);
"""
_ffi = cffi.FFI()
_ffi.cdef(_DECLARATIONS)

_CURLMSG_DONE = 1
_CURL_WAIT_POLLIN = 0x0001
_CURL_WAIT_POLLOUT = 0x0004
_CURL_SOCKOPT_ALREADY_CONNECTED = 2
_MAX_WAITFDS = 64
# The longest a handshake step waits without curl asking for a socket event:
# curl's own timers (curl_multi_timeout) are honoured below this.
_MAX_TIMER = 0.5
# One receive buffer for every stream: a read is copied out before any await.
_RECEIVE_MAX = 256 * 1024


class TLSFailure(Exception):
    """The browser-TLS handshake failed; the message is curl's."""


@functools.cache
def _lib() -> Any:
    """libcurl as curl_cffi ships it (one shared object, already loaded)."""
    return _ffi.dlopen(curl_wrapper.__file__)


def _open_socket_here(clientp: Any, _purpose: int, _address: Any) -> int:
    # The socket is the relay's, already connected: curl takes a duplicate.
    return int(_ffi.cast("int *", clientp)[0])


def _already_connected(_clientp: Any, _fd: int, _purpose: int) -> int:
    return _CURL_SOCKOPT_ALREADY_CONNECTED


def _keep_socket_open(_clientp: Any, _fd: int) -> int:
    # The descriptor stays the relay's: it closes it once curl is done with it.
    return 0


# C callbacks for curl, made once for the process.
_open_socket = _ffi.callback("int(void *, int, void *)", _open_socket_here)
_socket_options = _ffi.callback("int(void *, int, int)", _already_connected)
_keep_socket = _ffi.callback("int(void *, int)", _keep_socket_open)


def _handle(curl: Curl) -> Any:
    """curl_cffi's easy handle as a pointer of this module's FFI."""
    return _ffi.cast("void *", int(curl_wrapper.ffi.cast("uintptr_t", curl._curl)))


def _error_text(curl: Curl, code: int) -> str:
    text = str(curl_wrapper.ffi.string(curl._error_buffer).decode("utf-8", "replace")).strip()
    if text:
        return text
    return str(curl_wrapper.ffi.string(curl_wrapper.lib.curl_easy_strerror(code)).decode())


class _Multi:
    """The process-wide multi handle that runs browser-TLS handshakes.

    One handle for all sessions lets curl keep the parsed CA store between
    handshakes (``CURLOPT_CA_CACHE_TIMEOUT``) instead of reading the bundle
    each time.  Each handshake's task drives it with ``curl_multi_perform``
    and keeps finished results for their owners; a handshake finished by
    another task's call wakes its owner at once (its wait's cancel scope).
    """

    def __init__(self) -> None:
        lib = _lib()
        self.multi = lib.curl_multi_init()
        self.results: dict[int, int] = {}
        self._waits: dict[int, trio.CancelScope] = {}  # handshakes waiting on their socket
        self._running = _ffi.new("int *")
        self._queued = _ffi.new("int *")
        self._timeout = _ffi.new("long *")
        self._fds = _ffi.new("struct curl_waitfd[]", _MAX_WAITFDS)
        self._count = _ffi.new("unsigned int *")

    def step(self) -> None:
        """Let curl progress every handshake; file the finished ones' results."""
        lib = _lib()
        lib.curl_multi_perform(self.multi, self._running)
        while True:
            message = lib.curl_multi_info_read(self.multi, self._queued)
            if message == _ffi.NULL:
                return
            if message.msg == _CURLMSG_DONE:
                key = int(_ffi.cast("uintptr_t", message.easy_handle))
                self.results[key] = int(message.data.result)
                waiting = self._waits.get(key)
                if waiting is not None:
                    waiting.cancel()  # its owner need not wait for its socket any more

    def wanted(self, fd: int) -> tuple[int, float]:
        """What curl waits for on ``fd`` (``CURL_WAIT_POLL*`` bits) and its timer, in seconds."""
        lib = _lib()
        lib.curl_multi_waitfds(self.multi, self._fds, _MAX_WAITFDS, self._count)
        events = 0
        for index in range(min(self._count[0], _MAX_WAITFDS)):
            if self._fds[index].fd == fd:
                events |= self._fds[index].events
        lib.curl_multi_timeout(self.multi, self._timeout)
        timer = self._timeout[0]
        return events, _MAX_TIMER if timer < 0 else min(timer / 1000, _MAX_TIMER)

    async def handshake(self, easy: Any, fd: int) -> int:
        """Run ``easy``'s connect (the TLS handshake) to its end; curl's result code."""
        lib = _lib()
        key = int(_ffi.cast("uintptr_t", easy))
        lib.curl_multi_add_handle(self.multi, easy)
        code: int | None = None
        try:
            while True:
                self.step()
                code = self.results.pop(key, None)
                if code is not None:
                    return code
                events, timer = self.wanted(fd)
                with trio.move_on_after(timer) as scope:
                    self._waits[key] = scope
                    try:
                        if events & _CURL_WAIT_POLLOUT:
                            await trio.lowlevel.wait_writable(fd)
                        elif events & _CURL_WAIT_POLLIN:
                            await trio.lowlevel.wait_readable(fd)
                        else:
                            await trio.sleep_forever()  # curl's timer decides
                    finally:
                        del self._waits[key]
        finally:
            # A connected handle stays in the multi: removing it would drop the
            # connection curl_easy_send/recv use.  It leaves in remove().
            if code != CurlECode.OK:
                self.remove(easy)

    def remove(self, easy: Any) -> None:
        """Take ``easy`` out of the multi handle (before it is cleaned up)."""
        _lib().curl_multi_remove_handle(self.multi, easy)
        self.results.pop(int(_ffi.cast("uintptr_t", easy)), None)


@functools.cache
def _multi() -> _Multi:
    return _Multi()


@functools.cache
def _receive_buffer() -> tuple[bytearray, Any]:
    buffer = bytearray(_RECEIVE_MAX)
    return buffer, _ffi.from_buffer(buffer)


class CurlTLSStream(trio.abc.Stream):
    """A TLS connection owned by a curl easy handle, as a Trio stream."""

    def __init__(self, curl: Curl, fd: int) -> None:
        self._curl = curl
        self._easy = _handle(curl)
        self._fd = fd
        self._sent = _ffi.new("size_t *")
        self._received = _ffi.new("size_t *")
        self._closed = False
        self._sending = False
        self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` (waits while the socket's buffer is full)."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            lib = _lib()
            waited = False
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                code = lib.curl_easy_send(self._easy, _ffi.from_buffer(view), len(view), self._sent)
                if code == CurlECode.AGAIN:
                    await trio.lowlevel.wait_writable(self._fd)
                    waited = True
                    continue
                if code != CurlECode.OK:
                    raise trio.BrokenResourceError(_error_text(self._curl, code))
                view = view[self._sent[0] :]
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more bytes."""
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        await trio.lowlevel.wait_writable(self._fd)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` decrypted bytes; ``b""`` once the target closed."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            size = min(max_bytes or 65536, _RECEIVE_MAX)
            buffer, pointer = _receive_buffer()
            lib = _lib()
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                # Always ask curl first: BoringSSL may hold decrypted bytes
                # while the socket itself has nothing to read.
                code = lib.curl_easy_recv(self._easy, pointer, size, self._received)
                if code == CurlECode.AGAIN:
                    await trio.lowlevel.wait_readable(self._fd)
                    waited = True
                    continue
                if code != CurlECode.OK:
                    raise trio.BrokenResourceError(_error_text(self._curl, code))
                data = bytes(buffer[: self._received[0]])
                break
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the connection (curl closes its socket)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            _multi().remove(self._easy)
            self._curl.close()
            os.close(self._fd)
        await trio.lowlevel.checkpoint()


@functools.cache
def _system_bundle() -> str:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.exists(candidate):
            return candidate
    from curl_cffi.curl import DEFAULT_CACERT

    return str(DEFAULT_CACERT)


_bundles: dict[tuple[bytes, ...], str] = {}
_bundle_dir: tempfile.TemporaryDirectory[str] | None = None


def ca_bundle(context: ssl.SSLContext) -> str:
    """A CA file for curl trusting what ``context`` trusts: the system store
    plus any certificate loaded into it (``[targets] ca_file``)."""
    global _bundle_dir
    extra = tuple(context.get_ca_certs(binary_form=True))
    if not extra:
        return _system_bundle()
    path = _bundles.get(extra)
    if path is None:
        if _bundle_dir is None:
            _bundle_dir = tempfile.TemporaryDirectory(prefix="relay-ca-")
        path = os.path.join(_bundle_dir.name, f"bundle-{len(_bundles)}.pem")
        with open(_system_bundle(), encoding="ascii", errors="replace") as system:
            text = system.read()
        text += "\n" + "".join(ssl.DER_cert_to_PEM_cert(der) for der in extra)
        with open(path, "w", encoding="ascii") as file:
            file.write(text)
        _bundles[extra] = path
    return path


def _literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _configure(curl: Curl, url: str, connect_to: Any, fd: Any, browser: BrowserProfile) -> str:
    """Set ``curl`` up for a TLS-only connect; returns an error text, or ``""``."""
    lib = _lib()
    easy = _handle(curl)
    if curl.impersonate(browser.target, default_headers=False) != 0:
        return f"curl cannot impersonate {browser.target}"
    curl.setopt(CurlOpt.URL, url)
    curl.setopt(CurlOpt.CONNECT_ONLY, 1)
    curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V1_1)
    curl.setopt(CurlOpt.NOSIGNAL, 1)
    # Chrome sends a GREASE ECH extension when it has no ECH config; curl's
    # default would look one up in DNS (an HTTPS record) first.
    curl.setopt(CurlOpt.ECH, "grease")
    # No TLS session resumption across sessions: a ticket from one client's dial
    # would let the target link another client's dial through the same agent.
    curl.setopt(CurlOpt.SSL_SESSIONID_CACHE, 0)
    lib.curl_easy_setopt(easy, CurlOpt.CONNECT_TO, connect_to)
    lib.curl_easy_setopt(easy, CurlOpt.OPENSOCKETFUNCTION, _ffi.cast("void *", _open_socket))
    lib.curl_easy_setopt(easy, CurlOpt.OPENSOCKETDATA, fd)
    lib.curl_easy_setopt(easy, CurlOpt.SOCKOPTFUNCTION, _ffi.cast("void *", _socket_options))
    lib.curl_easy_setopt(easy, CurlOpt.CLOSESOCKETFUNCTION, _ffi.cast("void *", _keep_socket))
    return ""


async def start_browser_tls(
    stream: trio.SocketStream,
    host: str,
    port: int,
    browser: BrowserProfile,
    ca_file: str,
) -> CurlTLSStream:
    """TLS as ``browser`` over ``stream``'s connection, verifying ``host``.

    Raises :class:`TLSFailure` with curl's message.  ``stream`` is left to the
    caller, who closes it either way: curl works on a duplicate of its socket.
    """
    lib = _lib()
    peer = stream.socket.getpeername()[0]
    url = f"https://{_literal(host)}:{port}/"
    # CONNECT_TO the connected address: curl never resolves the name.
    mapping = f"{_literal(host)}:{port}:{_literal(peer)}:{port}".encode()
    fd = os.dup(stream.socket.fileno())
    curl = Curl(cacert=ca_file)
    curl.setopt(CurlOpt.CAINFO, ca_file)
    connect_to = lib.curl_slist_append(_ffi.NULL, mapping)
    descriptor = _ffi.new("int *", fd)  # read by the open-socket callback: kept alive here
    error: str | None = None
    try:
        error = _configure(curl, url, connect_to, descriptor, browser) or None
        if error is None:
            code = await _multi().handshake(_handle(curl), fd)
            if code != CurlECode.OK:
                error = _error_text(curl, code)
    except BaseException:
        error = "cancelled"
        raise
    finally:
        lib.curl_slist_free_all(connect_to)
        if error is not None:
            curl.close()
            os.close(fd)
    if error is not None:
        raise TLSFailure(error)
    return CurlTLSStream(curl, fd)
