"""The target policy (SSRF): each refusal, the allowlisted exceptions, and that the
address dialed is the address checked.

Names resolve through the gateway's ``resolver`` injection point, so no test
needs /etc/hosts, and no test lets the relay dial anything but 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import attrs
import pytest
import trio

from relay.client import open_relay
from relay.config import Config, TargetsConfig
from relay.targets import (
    HostPattern,
    PortRange,
    Rules,
    TargetPolicy,
    parse_port_range,
    parse_rule,
    resolve_checked,
)
from relay.wire.closecodes import Outcome, SessionError
from tests.support.gateway import KEY, connect_json, make_config, refusal, start_gateway
from tests.support.target import TargetServer

NOT_ALLOWED = "Target address not allowed: "


class FakeDNS:
    """A resolver with a fixed table that records every question it is asked."""

    def __init__(self, table: dict[str, Sequence[str] | list[Sequence[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if answer and isinstance(answer[0], list):  # a sequence of answers: DNS rebinding
            rotating: list[Sequence[str]] = answer  # type: ignore[assignment]
            return rotating[min(len(self.asked), len(rotating)) - 1]
        return answer  # type: ignore[return-value]


def _config(**targets: object) -> Config:
    return attrs.evolve(make_config(), targets=TargetsConfig(**targets))  # type: ignore[arg-type]


# --- the policy on its own (pure: what agents reuse) ---------------------------------------


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str, category: str) -> None:
    assert TargetPolicy().refusal(address) == category
    assert TargetPolicy().address_refusal(address, address) == (
        f"{NOT_ALLOWED}{address} resolves to {category} address {address}"
    )
    assert TargetPolicy(allow_private=True).refusal(address) is None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert TargetPolicy().refusal(address) is None


def test_rules_parse_cidrs_addresses_and_host_patterns() -> None:
    assert parse_rule("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_rule("10.1.2.3") == ipaddress.ip_network("10.1.2.3/32")
    assert parse_rule("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")  # host bits ignored
    assert parse_rule("fd00::/8") == ipaddress.ip_network("fd00::/8")
    assert parse_rule("Example.COM.") == HostPattern("example.com", wildcard=False)
    assert parse_rule("*.corp.example") == HostPattern("corp.example", wildcard=True)
    assert parse_rule("bücher.example") == HostPattern("xn--bcher-kva.example", wildcard=False)
    for bad in ("", "*", "a b", "*.", "a..b", "-a.example", "http://x", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="neither a CIDR nor a host pattern"):
            parse_rule(bad)


def test_host_patterns() -> None:
    exact, wildcard = parse_rule("corp.example"), parse_rule("*.corp.example")
    assert isinstance(exact, HostPattern)
    assert isinstance(wildcard, HostPattern)
    assert exact.matches("corp.example")
    assert exact.matches("CORP.example.")  # case and a trailing dot do not evade a rule
    assert not exact.matches("a.corp.example")
    assert wildcard.matches("a.corp.example")
    assert wildcard.matches("a.b.corp.example")
    assert not wildcard.matches("corp.example")
    assert not wildcard.matches("evilcorp.example")


def test_port_ranges() -> None:
    assert parse_port_range(443) == PortRange(443, 443)
    assert parse_port_range("8000-8999") == PortRange(8000, 8999)
    for bad in (0, 65536, "x", "9-1", "-5", "1-"):
        with pytest.raises(ValueError, match="port"):
            parse_port_range(bad)


def test_deny_wins_over_allow_and_allow_private() -> None:
    policy = TargetPolicy(
        allow_private=True,
        allow=Rules.parse(["10.0.0.0/8", "*.corp.example"]),
        deny=Rules.parse(["10.9.0.0/16", "secret.corp.example"]),
    )
    assert policy.address_refusal("a.corp.example", "10.1.1.1") is None
    assert policy.address_refusal("a.corp.example", "10.9.1.1") == (
        f"{NOT_ALLOWED}a.corp.example resolves to a denied address"
    )
    assert policy.refusal("::ffff:10.9.1.1") == "denied"
    assert policy.address_refusal("10.9.1.1", "10.9.1.1") == (
        f"{NOT_ALLOWED}10.9.1.1 resolves to denied address 10.9.1.1"
    )
    assert policy.target_refusal("Secret.Corp.Example.", 443) == (
        f"{NOT_ALLOWED}Secret.Corp.Example. is on the denylist"
    )


def test_allow_only_admits_nothing_else() -> None:
    policy = TargetPolicy(
        allow=Rules.parse(["*.partner.example", "203.0.113.0/24"]), allow_only=True
    )
    assert policy.address_refusal("ws.partner.example", "198.51.100.7") is None
    assert policy.refusal("203.0.113.9") is None
    assert policy.refusal("198.51.100.7") == "not allowlisted"
    assert policy.refusal("198.51.100.7", host="ws.partner.example") is None
    assert policy.address_refusal("other.example", "93.184.216.34") == (
        f"{NOT_ALLOWED}other.example is not on the allowlist"
    )


def test_allowed_ports() -> None:
    policy = TargetPolicy(allow_private=True, ports=(PortRange(443, 443), PortRange(8000, 8999)))
    assert policy.target_refusal("h.example", 443) is None
    assert policy.target_refusal("h.example", 8080) is None
    assert policy.target_refusal("h.example", 22) == f"{NOT_ALLOWED}port 22 is not allowed"


async def test_resolve_checked_refuses_before_resolving_what_it_can() -> None:
    dns = FakeDNS({"evil.example": ["93.184.216.34"]})
    policy = TargetPolicy(deny=Rules.parse(["evil.example"]), ports=(PortRange(443, 443),))
    for host, port in (("evil.example", 443), ("good.example", 80)):
        with pytest.raises(SessionError) as refused:
            await resolve_checked(host, port, policy, dns)
        assert refused.value.outcome is Outcome.TARGET_NOT_ALLOWED
        assert refused.value.close_code == 1008
    assert dns.asked == []  # neither name was even looked up


async def test_one_forbidden_answer_taints_the_name() -> None:
    dns = FakeDNS({"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(SessionError) as refused:
        await resolve_checked("mixed.example", 443, TargetPolicy(), dns)
    assert refused.value.message == f"{NOT_ALLOWED}mixed.example resolves to a private address"


def test_targets_table_builds_the_policy() -> None:
    table = TargetsConfig(
        allow=("127.0.0.1", "*.corp.example"), deny=("10.0.0.0/8",), ports=(443, "8000-8001")
    )
    policy = table.policy()
    assert policy.allow.networks == (ipaddress.ip_network("127.0.0.1/32"),)
    assert policy.allow.hosts == (HostPattern("corp.example", wildcard=True),)
    assert policy.deny.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert policy.ports == (PortRange(443, 443), PortRange(8000, 8001))
    assert TargetsConfig().policy() == TargetPolicy()


# --- through a running gateway: error JSON + 1008, and the target never dialed -------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:{port}/echo", "127.0.0.1 resolves to loopback address 127.0.0.1"),
        ("ws://10.1.2.3:{port}/", "10.1.2.3 resolves to private address 10.1.2.3"),
        (
            "ws://169.254.169.254/latest/meta-data/",
            "169.254.169.254 resolves to link-local address 169.254.169.254",
        ),
        ("ws://[::1]:{port}/echo", "::1 resolves to loopback address ::1"),
        (
            "ws://[::ffff:127.0.0.1]:{port}/echo",
            "::ffff:127.0.0.1 resolves to loopback address ::ffff:127.0.0.1",
        ),
        ("ws://0.0.0.0:{port}/", "0.0.0.0 resolves to unspecified address 0.0.0.0"),
        ("ws://internal.test:{port}/echo", "internal.test resolves to a private address"),
        ("ws://localhost.test:{port}/echo", "localhost.test resolves to a loopback address"),
        ("ws://metadata.test/", "metadata.test resolves to a link-local address"),
        ("ws://short-ip.test:{port}/", "short-ip.test resolves to a loopback address"),
    ],
)
async def test_refusals_through_the_gateway(
    nursery: trio.Nursery, target: TargetServer, url: str, expected: str
) -> None:
    dns = FakeDNS(
        {
            "internal.test": ["10.20.30.40"],
            "localhost.test": ["::1", "127.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "short-ip.test": ["127.0.0.1"],  # what "127.1" resolves to
        }
    )
    running = await start_gateway(nursery, make_config(allow_private=False), resolver=dns)
    message, code, reason = await refusal(
        running.ws_url, connect_json(url.format(port=target.port))
    )
    assert (message, code) == (NOT_ALLOWED + expected, 1008)
    assert reason == message
    assert target.connections == []


async def test_denied_name_and_port_through_the_gateway(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    dns = FakeDNS({"blocked.test": ["127.0.0.1"]})
    config = _config(allow_private=True, deny=("blocked.test",), ports=(str(target.port),))
    running = await start_gateway(nursery, config, resolver=dns)
    message, code, _ = await refusal(
        running.ws_url, connect_json(f"ws://blocked.test:{target.port}/")
    )
    assert (message, code) == (f"{NOT_ALLOWED}blocked.test is on the denylist", 1008)
    message, code, _ = await refusal(
        running.ws_url, connect_json(f"ws://127.0.0.1:{target.port + 1}/")
    )
    assert (message, code) == (f"{NOT_ALLOWED}port {target.port + 1} is not allowed", 1008)
    assert dns.asked == []
    assert target.connections == []


async def test_allowlisted_name_is_the_exception(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    """A name on the allowlist reaches a loopback target; its neighbours do not."""
    dns = FakeDNS({"ws.lab.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    running = await start_gateway(nursery, _config(allow=("*.lab.test",)), resolver=dns)
    url = f"ws://ws.lab.test:{target.port}/echo"
    async with open_relay(running.ws_url, api_key=KEY, url=url) as relayed:
        await relayed.websocket.send_message("allowed")
        assert await relayed.websocket.get_message() == "allowed"
    message, code, _ = await refusal(
        running.ws_url, connect_json(f"ws://other.test:{target.port}/echo")
    )
    assert (message, code) == (f"{NOT_ALLOWED}other.test resolves to a loopback address", 1008)
    assert len(target.connections) == 1


async def test_allowlisted_network_is_the_exception(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    running = await start_gateway(nursery, _config(allow=("127.0.0.1/32",)))
    async with open_relay(running.ws_url, api_key=KEY, url=f"{target.url}/echo") as relayed:
        await relayed.websocket.send_message("allowed")
        assert await relayed.websocket.get_message() == "allowed"
    for url in ("ws://127.0.0.2:{port}/", "ws://[::1]:{port}/"):
        _, code, _ = await refusal(running.ws_url, connect_json(url.format(port=target.port)))
        assert code == 1008
    assert len(target.connections) == 1


async def test_the_checked_address_is_the_one_dialed(
    nursery: trio.Nursery, target: TargetServer
) -> None:
    """DNS rebinding: the first answer is allowed, a second would not be. The
    gateway asks once and dials what it checked."""
    dns = FakeDNS({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    running = await start_gateway(nursery, _config(allow=("127.0.0.1",)), resolver=dns)
    url = f"ws://rebind.test:{target.port}/echo"
    async with open_relay(running.ws_url, api_key=KEY, url=url) as relayed:
        await relayed.websocket.send_message("same address")
        assert await relayed.websocket.get_message() == "same address"
    assert dns.asked == ["rebind.test"]
    assert target.connections[0].peer == "127.0.0.1"
    # And the other way round: a first answer that is refused is final.
    dns.table["rebind2.test"] = [["10.0.0.1"], ["127.0.0.1"]]
    dns.asked.clear()
    _, code, _ = await refusal(running.ws_url, connect_json(f"ws://rebind2.test:{target.port}/"))
    assert code == 1008
    assert dns.asked == ["rebind2.test"]


def test_the_readme_security_example_is_a_valid_configuration() -> None:
    import re
    import tomllib
    from pathlib import Path

    from relay.config import config_from_dict

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Security\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    policy = config_from_dict(tomllib.loads(block)).targets.policy()
    assert policy.refusal("169.254.169.254") == "denied"
    assert policy.refusal("10.20.1.1") is None
    assert policy.refusal("10.21.1.1") == "private"
    assert policy.address_refusal("ws.lab.example", "192.168.1.1") is None
    assert (
        policy.target_refusal("example.com", 80)
        == "Target address not allowed: port 80 is not allowed"
    )
