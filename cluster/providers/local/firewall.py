"""The local cluster's "security groups": one nftables ruleset per host, from ``INGRESS_RULES``.

Each namespace host filters its own input, as an AWS security group filters an instance's:
everything is dropped except loopback, replies to the host's own connections, and what the
rules of its group accept. Locally the machine itself plays both the Internet and the admin.
"""

from __future__ import annotations

from collections.abc import Mapping

from cluster.topology import ADMIN, CLUSTER, INTERNET, IngressRule, rules_for

TABLE = "sqlgate"


def rule_sources(rule: IngressRule, addresses_by_group: Mapping[str, list[str]],
                 machine_address: str) -> list[str] | None:
    """The source addresses a rule accepts; ``None`` means any source."""
    if rule.source == INTERNET:
        return None
    if rule.source == ADMIN:
        return [machine_address]
    if rule.source == CLUSTER:
        return sorted(a for addresses in addresses_by_group.values() for a in addresses)
    return sorted(addresses_by_group.get(rule.source, []))


def _statement(rule: IngressRule, sources: list[str] | None) -> str | None:
    if sources == []:
        return None  # a group with no hosts: nothing to accept
    match = f"ip saddr {{ {', '.join(sources)} }} " if sources else ""
    if rule.protocol == "icmp":
        what = "icmp type echo-request"
    else:
        low, high = rule.ports or (0, 0)
        what = f"tcp dport {low}" if low == high else f"tcp dport {low}-{high}"
    return f'{match}{what} accept comment "{rule.why}"'


def ruleset(group: str, addresses_by_group: Mapping[str, list[str]],
            machine_address: str) -> str:
    """An ``nft -f`` script that (re)places this host's table atomically."""
    accepts = [
        statement for rule in rules_for(group)
        if (statement := _statement(
            rule, rule_sources(rule, addresses_by_group, machine_address))) is not None
    ]
    body = "\n".join(f"        {line}" for line in accepts)
    return f"""add table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state invalid drop
{body}
    }}
}}
"""
