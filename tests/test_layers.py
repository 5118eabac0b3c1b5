"""The layout is the architecture: imports follow one way,
wire ← data plane ← (support) ← session ← gateway/node ← server ← cli,
and the wire layer performs no I/O (docs/decisions/0010-layout.md).

Read from the source with ``ast`` (imports inside functions count too), so a
shortcut added anywhere fails here, not in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "relay"

WIRE, DATAPLANE, SUPPORT, SESSION, FRONT, SERVER, CLI = range(7)
LAYER_NAMES = ["wire", "data plane", "support", "session", "gateway/node", "server", "cli"]

# Modules named here sit at their layer; every other relay module is support
# (configuration, limits, agents, dialing, metrics...), between the data plane
# and the session.
_LAYERS: dict[str, int] = {
    "relay.wire": WIRE,
    "relay.converter": WIRE,  # the one cattrs converter: pure, used by the wire's messages
    "relay.dataplane": DATAPLANE,
    "relay.session": SESSION,
    "relay.gateway": FRONT,
    "relay.node.node": FRONT,
    "relay.request_head": SERVER,
    "relay.listener": SERVER,
    "relay.httpserver": SERVER,
    "relay.asgi": SERVER,
    "relay.server": SERVER,
    "relay.workers": SERVER,
    "relay.configsource": SERVER,  # relay serve's configuration, read again on reload
    "relay.reload": SERVER,
    "relay.node.server": SERVER,
    "relay.cli": CLI,
    "relay.opscli": CLI,  # relay config check / keys new / reload
    "relay.node.cli": CLI,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    if module == "relay":
        return SERVER  # relay/__init__.py: the embedding API (serve, configs)
    best, layer = "", SUPPORT
    for prefix, rank in _LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best, layer = prefix, rank
    return layer


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from relay.wire import frames`` imports relay.wire.frames.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _relay_modules() -> list[Path]:
    return sorted(RELAY.rglob("*.py"))


def _known(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("path", _relay_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = _module_name(path)
    own = _layer(module)
    upward = sorted(
        f"{name} ({LAYER_NAMES[_layer(name)]})"
        for name in _imports(path)
        if name.startswith("relay.") and _known(name) and _layer(name) > own
    )
    assert not upward, f"{module} ({LAYER_NAMES[own]}) imports upward: {upward}"


def test_the_wire_layer_does_no_io() -> None:
    """Nothing in relay/wire may import trio, sockets or anything that does I/O."""
    forbidden = {"trio", "socket", "ssl", "asyncio", "anyio", "selectors"}
    wire = sorted((RELAY / "wire").rglob("*.py"))
    assert wire
    for path in wire:
        for name in _imports(path):
            root = name.split(".")[0]
            assert root not in forbidden, f"{path.relative_to(ROOT)} imports {name}"
            if root == "relay":
                assert _layer(name) == WIRE, f"{path.relative_to(ROOT)} imports {name}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a data-plane module importing the session is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from relay.session import Session\nimport trio\n")
    assert _layer("relay.dataplane.bad") == DATAPLANE
    assert any(_layer(n) > DATAPLANE for n in _imports(bad) if n.startswith("relay."))
