"""The parser WebSocket API (protocol parser-ws/2.0): ``create_app(ParserConfig)``."""

from parser_api.app import ParserApp, create_app
from parser_api.config import ParserConfig

__all__ = ["ParserApp", "ParserConfig", "create_app"]
