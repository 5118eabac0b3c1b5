"""The I/O-free protocol layer: frame codec, masking, opening handshakes, the
connect message and close codes.

Nothing here performs I/O or imports ``trio`` (tests/test_layers.py checks):
every rule of the wire can be tested on bytes alone, as h11 and wsproto do.
"""
