"""Peer relays: the straightforward relay a user of each library would write.

Each speaks the gateway's connect protocol (first JSON text message with ``url``,
connect to the target, answer ``{"type": "connected", ...}``, then relay), so one
load generator drives them all. Run as ``python -m bench.peers.NAME --port N``;
they print ``READY <port>`` once listening.
"""
