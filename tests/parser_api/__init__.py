"""Tests of the parser API and the GatewayClient SDK."""
