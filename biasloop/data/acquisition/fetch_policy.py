"""Which URLs of untrusted metadata may be fetched: ``http``/``https`` to public addresses only.

LAION-style metadata is scraped from the web, so its URL column may hold anything: ``file://`` paths,
bare paths, ``ftp:``/``data:``/``gopher:`` URLs, loopback or private addresses, the cloud metadata
address ``169.254.169.254``, numeric hosts such as ``http://2130706433/`` (127.0.0.1). A URL is fetched
only when all of these hold:

- its scheme is ``http`` or ``https`` (otherwise ``refused_scheme``);
- it is well formed: a host, a valid port, no credentials (otherwise ``refused_url``);
- every address its host stands for is public (otherwise ``refused_address``): not loopback, private,
  link-local, multicast, reserved, unspecified, site-local or otherwise not globally routable, judged by
  the standard library's :mod:`ipaddress` (``is_global`` and the class properties); an IPv4-mapped IPv6
  address (``::ffff:a.b.c.d``) and a 6to4 address are judged by the IPv4 address inside them; a numeric
  host in a legacy form (decimal ``2130706433``, hex ``0x7f000001``, octal ``0177.0.0.1``, short
  ``127.1``) is refused whatever it encodes; ``localhost`` and ``*.localhost`` stand for 127.0.0.1.

``allowed_networks`` (``laion_download.local_mirror_networks``, empty by default) lists networks a user
trusts, e.g. their own mirror on ``10.1.2.0/24`` or a test server on ``127.0.0.2/32``: addresses inside
them are fetched even if private or loopback. Schemes and URL shape are never relaxed.

Two checks use this policy:

1. :func:`url_refusal` on the URL string before the download (no DNS lookup unless a resolver is passed):
   refused rows never reach img2dataset and get a status row with their reason;
2. :func:`connect_checked`, the connect function of every HTTP(S) connection img2dataset opens
   (:mod:`biasloop.data.acquisition.checked_download`): it resolves the host once, refuses the
   connection if any address is not allowed, and connects to the checked address itself, so DNS that
   changes between the two checks, and redirects (each one a new connection), are held to the same rule.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import unquote, urlsplit

REFUSED_SCHEME = "refused_scheme"
REFUSED_ADDRESS = "refused_address"
REFUSED_URL = "refused_url"
REFUSAL_REASONS = (REFUSED_SCHEME, REFUSED_ADDRESS, REFUSED_URL)
ALLOWED_SCHEMES = ("http", "https")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> address strings
GetAddrInfo = Callable[..., list]  # socket.getaddrinfo's signature and result


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a URL or a connection is refused: ``reason`` (one of :data:`REFUSAL_REASONS`) and a detail."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class RefusedConnection(ConnectionRefusedError):
    """A connection the policy refused before any packet was sent; ``str()`` starts with the reason."""


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``["10.1.2.0/24", "127.0.0.2"]`` as networks (a bare address is a one-address network).

    Raises:
        ValueError: naming the entry that is not a network (or has host bits set: ``10.1.2.3/24``).
    """
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(str(spec).strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"laion_download.local_mirror_networks: {spec!r} is not a network ({exc})") from None
    return tuple(networks)


def _address_class(address: Address) -> str | None:
    """The class that makes ``address`` non-public ("loopback", "private", ...), or None when public."""
    for name in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved", "site_local"):
        if getattr(address, f"is_{name}", False):
            return name.replace("_", "-")
    return None if address.is_global else "not globally routable"


def address_refusal(address: str | Address, allowed_networks: Sequence[Network] = ()) -> str | None:
    """Why connecting to ``address`` is refused ("127.0.0.1 (loopback)"), or None when it is allowed.

    An address inside ``allowed_networks`` is allowed; otherwise it must be public. IPv4-mapped and 6to4
    IPv6 addresses are judged by the IPv4 address they carry (what the packets reach).
    """
    if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address = ipaddress.ip_address(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address_refusal(address.ipv4_mapped, allowed_networks)
        if address.scope_id:  # fe80::1%eth0: the network test needs the bare address
            address = ipaddress.IPv6Address(str(address).split("%")[0])
    if any(address in network for network in allowed_networks):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        inner = address_refusal(address.sixtofour, allowed_networks)
        if inner:
            return f"{address} (6to4 for {inner})"
    kind = _address_class(address)
    return None if kind is None else f"{address} ({kind})"


def _legacy_numeric_ipv4(host: str) -> str | None:
    """``host`` as a dotted quad when it is an IPv4 address in a form other than the dotted quad
    (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``): C's ``inet_aton`` reads them, and so would
    the resolver at connect time."""
    try:
        packed = socket.inet_aton(host)  # pure parsing, no lookup
    except (OSError, ValueError):
        return None
    return str(ipaddress.IPv4Address(packed))


def url_refusal(
    url: object, allowed_networks: Sequence[Network] = (), resolve: Resolver | None = None
) -> Refusal | None:
    """Why ``url`` must not be fetched, or None when it may be.

    Args:
        url: a URL from untrusted metadata (anything: a non-string is refused).
        allowed_networks: from :func:`parse_networks`; addresses inside them are allowed.
        resolve: ``(host, port) -> addresses`` to judge a host name by what it resolves to (a wrapper
            of :func:`socket.getaddrinfo`, or a dict lookup in tests); None judges names without any lookup (only
            literal addresses, legacy numeric forms and ``localhost`` are refused then; the connect-time
            check judges the rest).

    Returns:
        A :class:`Refusal`, or None.
    """
    if not isinstance(url, str) or not url.strip():
        return Refusal(REFUSED_URL, "empty or not a string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        return Refusal(REFUSED_URL, f"unparsable URL ({exc})")
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        what = f"scheme {scheme!r}" if scheme else "no scheme (a bare path)"
        return Refusal(REFUSED_SCHEME, f"{what}; only http and https are fetched")
    if parts.username is not None or parts.password is not None:
        return Refusal(REFUSED_URL, "credentials in the URL")
    if not host:
        return Refusal(REFUSED_URL, "no host")
    if not host.isascii():
        # the resolver sees the IDNA form: fullwidth "１２７.０.０.１" is 127.0.0.1, "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ" is localhost
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            return Refusal(REFUSED_URL, f"host {host!r} is not a valid name ({exc})")
    port = port or (443 if scheme == "https" else 80)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        if ":" in host:  # an IPv6 literal that does not parse, e.g. with a percent-encoded zone
            try:
                literal = ipaddress.ip_address(unquote(host))
            except ValueError:
                return Refusal(REFUSED_URL, f"unparsable IPv6 host {host!r}")
    if literal is not None:
        why = address_refusal(literal, allowed_networks)
        return Refusal(REFUSED_ADDRESS, why) if why else None
    legacy = _legacy_numeric_ipv4(host)
    if legacy is not None:
        return Refusal(REFUSED_ADDRESS, f"numeric host {host!r} (= {legacy}) in a non-standard form")
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        why = address_refusal("127.0.0.1", allowed_networks)
        return Refusal(REFUSED_ADDRESS, f"{host} = {why}") if why else None
    if resolve is None:
        return None
    try:
        addresses = list(resolve(host, port))
    except OSError as exc:
        return Refusal(REFUSED_ADDRESS, f"{host} does not resolve ({exc})")
    if not addresses:
        return Refusal(REFUSED_ADDRESS, f"{host} resolves to no address")
    for address in addresses:
        why = address_refusal(address, allowed_networks)
        if why:
            return Refusal(REFUSED_ADDRESS, f"{host} resolves to {why}")
    return None


def connect_checked(
    address: tuple[str, int],
    timeout: float | None | object = socket._GLOBAL_DEFAULT_TIMEOUT,  # noqa: SLF001 (socket.create_connection's default)
    source_address: tuple[str, int] | None = None,
    *,
    allowed_networks: Sequence[Network] = (),
    getaddrinfo: GetAddrInfo = socket.getaddrinfo,
) -> socket.socket:
    """:func:`socket.create_connection` that refuses any host resolving to an address not allowed.

    The host is resolved once; if **any** of its addresses is refused, nothing is connected (a name
    listing a public and a private address is refused); otherwise the socket connects to the checked
    addresses themselves, so the answer cannot change between the check and the connection.

    Raises:
        RefusedConnection: ``"refused_address: <host> resolves to <address> (<class>)"``.
        OSError: as :func:`socket.create_connection` (resolution or connection failures).
    """
    host, port = address[0], address[1]
    infos = getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if not infos:
        raise RefusedConnection(f"{REFUSED_ADDRESS}: {host} resolves to no address")
    for *_, sockaddr in infos:
        why = address_refusal(str(sockaddr[0]), allowed_networks)
        if why:
            raise RefusedConnection(f"{REFUSED_ADDRESS}: {host} resolves to {why}")
    last_error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # noqa: SLF001
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            last_error = exc
            sock.close()
    assert last_error is not None
    raise last_error
