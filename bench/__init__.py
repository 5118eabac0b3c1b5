"""Relay benchmark and load-testing harness (``python -m bench`` / ``relay bench``).

Kept free of imports so that the small helper processes (``bench.pin``, the echo
target, the load worker) start quickly.
"""
