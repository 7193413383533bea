"""How participants join a lab served to a class: the addresses to open, and a QR code of one for a projector.

The server's own setting decides (Streamlit's `server.address`, passed in as a plain value): a loopback
address, or none (a person running the lab on their laptop), means nobody else is meant to join, so there is
nothing to show. `0.0.0.0` (or `::`) listens on every interface, so the addresses are this machine's own:
the one its default route leaves from first (the address a room's network most likely reaches), then the
ones its host name resolves to. Any other setting is the one address everyone must use. Nothing here sends a
packet or asks a DNS server about anything but this machine's own name.
"""

from __future__ import annotations

import io
import ipaddress
import socket

import segno

WILDCARDS = ("0.0.0.0", "::")  # listen on every interface
# documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket to one only asks the kernel which
# local address the default route would use; no packet is sent and nobody answers them anyway
_PROBES = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
QR_SCALE = 10  # pixels per module: a lab's URL makes a 25-29 module code, 330-370 px with its quiet zone
QR_BORDER = 4  # modules of quiet zone, the standard's minimum: phones need it to find the code on a slide


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is not part of it
    except ValueError:
        return None


def is_loopback(host: str | None) -> bool:
    """Whether a `server.address` setting keeps the lab to this machine: unset, a loopback address, or
    `localhost`. A laptop's default (unset) counts as private: serving a class is a choice made on the
    command line (`--server.address 0.0.0.0`)."""
    if not host or not host.strip():
        return True
    host = host.strip().strip("[]").lower()
    ip = _ip(host)
    if ip is not None:
        return ip.is_loopback
    return host == "localhost" or host.endswith(".localhost")


def _reachable(ip) -> bool:
    """An address someone else in the room could open: not loopback, link-local (it needs a zone a browser
    cannot be given), multicast or unspecified."""
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def _outward(family: int) -> str | None:
    """The local address the default route leaves from (a UDP connect: no packet sent); None without a route."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((_PROBES[family], 9))
            return s.getsockname()[0]
    except OSError:
        return None


def local_addresses(family: int = socket.AF_INET) -> list[str]:
    """This machine's addresses of one family that others could reach, the default route's first."""
    found = [_outward(family)]
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, family)]
    except OSError:  # a host name that does not resolve: the default route's address is all there is
        pass
    return _usable(found)


def _usable(addresses) -> list[str]:
    """The reachable ones, each once, in the order given."""
    out = []
    for a in addresses:
        ip = _ip(a) if a else None
        if ip is not None and _reachable(ip) and str(ip) not in out:
            out.append(str(ip))
    return out


def _url(host: str, port: int, base_path: str) -> str:
    ip = _ip(host)
    shown = f"[{host}]" if ip is not None and ip.version == 6 else host
    base = base_path.strip("/")
    return f"http://{shown}:{port}/" + (f"{base}/" if base else "")


def join_urls(host: str | None, port: int, base_path: str = "", local: list[str] | None = None) -> list[str]:
    """The addresses participants open to join, best first (the QR shows the first); empty when the server
    is loopback-only (see is_loopback). `host`, `port` and `base_path` are Streamlit's `server.address`,
    `server.port` and `server.baseUrlPath`; `local` stands for this machine's reachable addresses (default:
    found with local_addresses, IPv4 first, and IPv6 too when listening on `::`). A link carries no lab:
    each participant who opens it gets a new lab of their own."""
    if is_loopback(host):
        return []
    host = host.strip().strip("[]")
    if host in WILDCARDS:
        if local is None:
            local = local_addresses(socket.AF_INET)
            if host == "::":  # a dual-stack socket: both families answer
                local += local_addresses(socket.AF_INET6)
        hosts = _usable(local)
    else:
        hosts = [host]
    return [_url(h, port, base_path) for h in hosts]


def qr_png(url: str) -> bytes:
    """A PNG of a QR code for `url`, dark on white with a quiet zone, big enough for a projector. Always a
    full QR code (segno would pick a Micro QR for short text, which most phone cameras do not read)."""
    buf = io.BytesIO()
    segno.make(url, error="m", micro=False).save(buf, kind="png", scale=QR_SCALE, border=QR_BORDER,
                                                 dark="black", light="white")
    return buf.getvalue()
