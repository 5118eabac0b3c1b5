"""The data plane: a session's two hops, the frame pumps between them, and the
closing rules that end a relay phase.  Built on :mod:`relay.wire`; knows
nothing of keys, agents or configuration files."""
