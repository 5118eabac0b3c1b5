"""``relay agent``: the egress node process that gateways reach over an
authenticated WebSocket link (its server and its command).  The gateway-side
agent kinds live in :mod:`relay.agents`."""
