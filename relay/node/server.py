"""``relay agent``'s listener: the gateway's request-head bounds, then the node's routes.

Every connection first takes the same steps as one on the gateway's port
(:mod:`relay.request_head`: the handshake cap, TLS, the head's size and
deadline, HTTP/2 refused); only then does the node add what is its own: the
two paths ``/agent`` and ``/agent/health`` and the token check.
"""

from __future__ import annotations

import json
import logging
from functools import partial

import trio

from relay.agents.remote import keep_link_alive
from relay.config import NodeConfig
from relay.dataplane.hop import RECEIVE_SIZE, Hop, adopt_socket
from relay.node.node import HEALTH_PATH, LINK_PATH, Node, NodeAddress, NodeFront
from relay.request_head import RequestHead, take_request_head
from relay.session import serve_session
from relay.wire.closecodes import NORMAL
from relay.wire.frames import TEXT, FrameReader

__all__ = ["handle_link", "serve_node"]

log = logging.getLogger("relay.node")


async def _answer_health(node: Node, stream: trio.abc.Stream, pending: bytes) -> None:
    """Say who this node is, close, and wait briefly for the close answer."""
    server = node.config.server
    hop = Hop("gateway", stream, is_target=False, max_message_size=RECEIVE_SIZE, pending=pending)
    with trio.move_on_after(server.close_timeout):
        try:
            await hop.send_frame(TEXT, json.dumps(node.identity()).encode())
            await hop.send_close(NORMAL, "")
            await hop.await_close(FrameReader(from_client=True, max_frame=RECEIVE_SIZE))
        except trio.BrokenResourceError:
            return


async def _route(node: Node, head: RequestHead) -> None:
    path = head.path
    if path not in (LINK_PATH, HEALTH_PATH):
        await head.reject(404, f"This is a relay agent; gateways connect to {LINK_PATH}")
        return
    if not head.is_upgrade:
        await head.reject(426, f"{path} is a WebSocket endpoint")
        return
    if not node.authorized(head.header(b"authorization")):
        log.warning("refused a link without the right token")
        await head.reject(401, "A valid Authorization: Bearer token is required")
        return
    trailing = await head.accept_upgrade()
    if trailing is None:
        return
    stream = head.stream
    del head
    if path == HEALTH_PATH:
        await _answer_health(node, stream, trailing)
    else:
        # A plain (non-TLS) link takes the pumps' direct-socket path.
        stream, sock = adopt_socket(stream)
        await serve_session(NodeFront(node), stream, pending=trailing, sock=sock)


async def handle_link(node: Node, stream: trio.abc.Stream) -> None:
    """Serve one accepted connection; never raises (one link cannot harm another)."""
    try:
        keep_link_alive(stream)
        head = await take_request_head(stream, node.config.server, node.capacity, node.tls)
        if head is not None:
            stream = head.stream
            await _route(node, head)
    except Exception:
        log.exception("link handler failed")
    finally:
        await trio.aclose_forcefully(stream)


async def serve_node(
    config: NodeConfig,
    *,
    node: Node | None = None,
    task_status: trio.TaskStatus[NodeAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an agent until cancelled; ``task_status`` gets the bound address."""
    if node is None:
        node = Node.from_config(config)
    server = config.server
    listeners = await trio.open_tcp_listeners(server.port, host=server.host)
    sockname = listeners[0].socket.getsockname()
    address = NodeAddress(str(sockname[0]), int(sockname[1]), node.tls is not None)
    log.info("relay agent listening on %s", address.url)
    task_status.started(address)
    await trio.serve_listeners(partial(handle_link, node), listeners)
