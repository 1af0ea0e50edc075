"""Which network addresses a tenant-chosen URL may lead to.

An image URL or a callback URL is an attacker-chosen request made from inside our network
(SSRF): it could read cloud metadata credentials, an admin port on loopback or a neighbour on the
private network. Only public unicast addresses are reachable, unless the operator listed the
exact "host:port" in an allow-list.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Listed explicitly although the `ipaddress` properties already cover them: these are the
# addresses an attacker is actually after, and they must stay refused whatever a future Python
# decides `is_global` means.
_CLOUD_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 gateways translate these to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_blocked_address(address: IPAddress) -> bool:
    """True for every address an outbound request must not reach: anything but public unicast.

    IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64, 6to4) are also judged
    by the IPv4 address they lead to, since that is where the packets end up, whatever the IPv6
    address's own properties say.
    """
    embedded = _embedded_ipv4(address)
    if embedded is not None and is_blocked_address(embedded):
        return True
    return (
        address in _CLOUD_METADATA_ADDRESSES
        or address in _CARRIER_GRADE_NAT
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def allow_list_key(host: str, port: int) -> str:
    """The form allow-lists are written in: host:port, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without any DNS lookup, or None for a name.

    Asks the same parser the connection would use (getaddrinfo with AI_NUMERICHOST), so the
    legacy spellings it accepts, `127.1`, `0x7f000001` or `2130706433`, count as literals too.
    """
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except (OSError, UnicodeError, ValueError):
        return None
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
    return None


def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every IPv4 and IPv6 address of `host`; raises OSError or UnicodeError when there is none."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the address is the rest.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} has no IPv4 or IPv6 address")
    return tuple(addresses)
