"""Target dials that look like a browser: Chrome's TLS ClientHello (through
curl-impersonate) and Chrome's WebSocket upgrade request.

See docs/decisions/0012-browser-impersonation.md for why curl is used only as
the TLS layer and the relay keeps its own TCP, proxy and frame handling.
"""
