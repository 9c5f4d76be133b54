"""Which local addresses WebRTC's ICE offers (`serve --ice-address`), and keeping loopback sessions on loopback.

aioice gathers host candidates from every interface but never offers 127.0.0.1, and has no parameter for the
addresses; `host_addresses` names them for the peer connections gathered inside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

import aioice.ice

from engines.errors import ConfigError

LOOPBACK = ("127.0.0.1",)

_chosen: ContextVar[tuple[str, ...] | None] = ContextVar("dancecam_ice_host_addresses", default=None)
_interfaces = aioice.ice.get_host_addresses  # aioice's own: every interface address but 127.0.0.1 and ::1


def _gathered(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _chosen.get()
    if chosen is None:
        return _interfaces(use_ipv4, use_ipv6)
    return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]


# aioice looks the function up at every gathering; outside `host_addresses` it behaves exactly as before
aioice.ice.get_host_addresses = _gathered


@contextlib.contextmanager
def host_addresses(addresses: Iterable[str] | None) -> Iterator[None]:
    """ICE gathering inside this block (this task and the tasks it starts) offers exactly `addresses`;
    None or empty: aioice's choice (every interface but loopback)."""
    chosen = tuple(addresses) if addresses is not None else ()
    token = _chosen.set(chosen or None)
    try:
        yield
    finally:
        _chosen.reset(token)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name (an mDNS ".local" candidate, say)


def all_loopback(addresses: Iterable[str] | None) -> bool:
    found = tuple(addresses or ())
    return bool(found) and all(is_loopback(a) for a in found)


def check_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """`--ice-address` values: IP addresses of this machine, each once; `ConfigError` names the first that is not."""
    checked: list[str] = []
    for given in addresses:
        try:
            ip = ipaddress.ip_address(given.strip("[]"))
        except ValueError:
            raise ConfigError(f"--ice-address {given!r} is not an IP address (e.g. 127.0.0.1, 192.168.1.20)") from None
        if ip.is_unspecified or ip.is_multicast:
            raise ConfigError(f"--ice-address {given}: name one address of this machine, not {ip}")
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # aioice binds UDP on it: see that it can
            try:
                probe.bind((str(ip), 0))
            except OSError as e:
                raise ConfigError(f"--ice-address {given} is not an address of this machine ({e.strerror})") from None
        if str(ip) not in checked:
            checked.append(str(ip))
    return tuple(checked)


_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ ", re.IGNORECASE)


def loopback_candidates_only(sdp: str) -> str:
    """`sdp` without the candidates a loopback-only peer cannot use: every packet of such a session stays on
    loopback, even when the other side also offers its interface (or mDNS) addresses."""
    lines = sdp.splitlines(keepends=True)
    kept = [line for line in lines if not (m := _CANDIDATE.match(line)) or is_loopback(m.group(1))]
    return "".join(kept)


def sdp_candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of every `a=candidate` line of `sdp`."""
    return [m.group(1) for line in sdp.splitlines() if (m := _CANDIDATE.match(line))]
