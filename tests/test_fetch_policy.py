"""The fetch policy for untrusted metadata URLs: only http/https to public addresses.

The decisions are pure functions tested on URL strings and addresses (with injected resolvers: no DNS
lookup of any name). The checked opener is tested against servers on loopback addresses only: one on
127.0.0.2 stands for the public web (let in by ``local_mirror_networks``), one on 127.0.0.1 for an
internal service, whose request log must stay empty. No request leaves 127.0.0.0/8.
"""

from __future__ import annotations

import socket
from urllib.error import URLError
from urllib.parse import quote

import polars as pl
import pytest

from biasloop.data.acquisition.download import download_table, failure_reason, refuse_urls
from biasloop.data.acquisition.fetch_policy import (
    RefusedConnection,
    address_refusal,
    connect_checked,
    parse_networks,
    url_refusal,
)
from tests.laion_fixtures import MIRROR_HOST, MIRROR_NETWORK, photo_server

MIRROR = parse_networks([MIRROR_NETWORK])


# ----------------------------------------------------------------------------------- URL strings


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "/etc/passwd",
        "relative/photo.jpg",
        "ftp://example.com/a.jpg",
        "data:image/jpeg;base64,/9j/4AAQ",
        "gopher://example.com/",
        "javascript:alert(1)",
        "ws://example.com/",
        "s3://bucket/a.jpg",
        "//example.com/a.jpg",
        "C:\\photos\\a.jpg",
    ],
)
def test_other_schemes_and_bare_paths_are_refused(url: str) -> None:
    refusal = url_refusal(url)
    assert refusal is not None and refusal.reason == "refused_scheme", url


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/a.jpg", "loopback"),
        ("http://127.255.0.9:8080/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # the cloud metadata service
        ("http://224.0.0.1/", "multicast"),
        ("http://239.255.255.250:1900/", "multicast"),
        ("http://240.0.0.1/", "private"),  # reserved 240/4: Python lists it among the private networks
        ("http://255.255.255.255/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://100.64.0.1/", "not globally routable"),  # carrier-grade NAT
        ("http://192.0.2.1/", "private"),  # documentation range
        ("http://[::1]/", "loopback"),
        ("http://[::]/", "unspecified"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://[fd12::1]/", "private"),
        ("http://[fec0::1]/", "site-local"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[2001:db8::1]/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),  # IPv4-mapped
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("http://[::127.0.0.1]/", "reserved"),  # IPv4-compatible (deprecated)
        ("http://[64:ff9b::7f00:1]/", "reserved"),  # NAT64 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(url: str, kind: str) -> None:
    refusal = url_refusal(url)
    assert refusal is not None and refusal.reason == "refused_address", url
    assert f"({kind})" in refusal.detail


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7f.0x0.0x0.0x1/",
        "http://0177.0.0.1/",
        "http://017700000001/",
        "http://127.1/",
        "http://127.0.1/",
        "http://3232235777/",  # 192.168.1.1
        "http://134744072/",
    ],  # 8.8.8.8: a legacy form is refused whatever it encodes
)
def test_numeric_hosts_in_legacy_forms_are_refused(url: str) -> None:
    refusal = url_refusal(url)
    assert refusal is not None and refusal.reason == "refused_address" and "non-standard form" in refusal.detail


@pytest.mark.parametrize("url", ["http://１２７.０.０.１/", "http://127。0。0。1/", "http://１０.０.０.１/"])
def test_unicode_spellings_of_addresses_are_judged_as_the_resolver_reads_them(url: str) -> None:
    refusal = url_refusal(url)
    assert refusal is not None and refusal.reason == "refused_address", url


@pytest.mark.parametrize(
    "url", ["http://localhost/", "http://LOCALHOST.:8000/", "http://api.localhost/", "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/"]
)
def test_localhost_names_are_loopback_without_a_lookup(url: str) -> None:
    refusal = url_refusal(url, resolve=_no_lookup)
    assert refusal is not None and refusal.reason == "refused_address" and "loopback" in refusal.detail


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@example.com/a.jpg",
        "http://example.com@127.0.0.1/",
        "http:///a.jpg",
        "http://example.com:99999/",
        "http://[::1/",
        "http://[zz::1]/",
        "",
        "   ",
    ],
)
def test_malformed_urls_and_credentials_are_refused(url: str) -> None:
    refusal = url_refusal(url)
    assert refusal is not None and refusal.reason == "refused_url", url


def test_non_strings_are_refused() -> None:
    assert url_refusal(None).reason == "refused_url"
    assert url_refusal(12).reason == "refused_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.jpg",
        "HTTPS://Example.COM:8443/a b.jpg?x=1",
        "https://8.8.8.8/a.jpg",
        "http://[2606:4700:4700::1111]/a.jpg",
        "http://[::ffff:8.8.8.8]/a.jpg",
        "http://1.1.1.1:80/",
        "http://bücher.example/a.jpg",
    ],
)
def test_public_http_urls_pass(url: str) -> None:
    assert url_refusal(url) is None


def _no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"unexpected lookup of {host}")


def test_names_are_judged_by_what_they_resolve_to() -> None:
    table = {
        "public.test": ["93.184.215.14"],
        "internal.test": ["10.0.0.5"],
        "both.test": ["93.184.215.14", "127.0.0.1"],
        "metadata.test": ["169.254.169.254"],
        "v6.test": ["::1"],
        "mapped.test": ["::ffff:192.168.0.1"],
    }

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    assert url_refusal("http://public.test/a.jpg", resolve=resolve) is None
    for host, kind in [
        ("internal.test", "private"),
        ("both.test", "loopback"),
        ("metadata.test", "link-local"),
        ("v6.test", "loopback"),
        ("mapped.test", "private"),
    ]:
        refusal = url_refusal(f"http://{host}/a.jpg", resolve=resolve)
        assert refusal.reason == "refused_address" and f"({kind})" in refusal.detail, host
    assert url_refusal("http://nowhere.test/", resolve=resolve).reason == "refused_address"
    assert url_refusal("http://internal.test/") is None  # without a resolver names wait for the connect-time check


def test_local_mirror_networks_let_in_only_what_they_name() -> None:
    mirror = parse_networks(["10.1.2.0/24", "127.0.0.2", "fd00:1::/64"])
    assert url_refusal("http://10.1.2.3/a.jpg", mirror) is None
    assert url_refusal("http://127.0.0.2:8000/a.jpg", mirror) is None
    assert url_refusal("http://[::ffff:127.0.0.2]/a.jpg", mirror) is None
    assert url_refusal("http://[fd00:1::5]/a.jpg", mirror) is None
    assert url_refusal("http://10.1.3.1/a.jpg", mirror).reason == "refused_address"
    assert url_refusal("http://127.0.0.1/a.jpg", mirror).reason == "refused_address"
    assert url_refusal("file:///srv/mirror/a.jpg", mirror).reason == "refused_scheme"  # schemes are never relaxed
    assert url_refusal("http://2130706434/a.jpg", mirror).reason == "refused_address"  # nor numeric forms


@pytest.mark.parametrize("spec", ["10.1.2.3/24", "not-a-network", "300.0.0.0/8"])
def test_bad_mirror_networks_are_named(spec: str) -> None:
    with pytest.raises(ValueError, match="local_mirror_networks: .* is not a network"):
        parse_networks([spec])


def test_address_refusal_on_addresses() -> None:
    assert address_refusal("8.8.8.8") is None
    assert address_refusal("2606:4700::1111") is None
    assert address_refusal("127.0.0.1") == "127.0.0.1 (loopback)"
    assert address_refusal("::ffff:127.0.0.1") == "127.0.0.1 (loopback)"
    assert address_refusal("fe80::1%eth0") == "fe80::1 (link-local)"


# -------------------------------------------------------------------------------- status records


def test_refused_urls_get_a_status_row_each_and_count_per_occupation() -> None:
    selection = pl.DataFrame(
        {
            "sample_id": ["s0", "s1", "s2", "s3", "s4"],
            "url": [
                "http://example.com/a.jpg",
                "file:///etc/passwd",
                "http://169.254.169.254/",
                "/tmp/a.jpg",
                "http://u:p@example.com/",
            ],
            "occupations": [["nurse"], ["nurse", "engineer"], ["engineer"], ["nurse"], ["engineer"]],
        }
    )
    allowed, refused = refuse_urls(selection)
    assert allowed["sample_id"].to_list() == ["s0"]
    assert refused.columns == ["sample_id", "key", "url", "status", "reason", "error_message"]
    assert refused.select("sample_id", "reason").rows() == [
        ("s1", "refused_scheme"),
        ("s2", "refused_address"),
        ("s3", "refused_scheme"),
        ("s4", "refused_url"),
    ]
    assert all(m.startswith(r + ": ") for r, m in refused.select("reason", "error_message").iter_rows())
    assert [failure_reason(s, m) for s, m in refused.select("status", "error_message").iter_rows()] == refused[
        "reason"
    ].to_list()
    table = download_table(selection, refused, ["engineer", "nurse"]).to_dicts()
    assert table[0] == {
        "occupation": "engineer",
        "requested": 3,
        "downloaded": 0,
        "failed_missing": 0,
        "failed_refused_address": 1,
        "failed_refused_scheme": 1,
        "failed_refused_url": 1,
    }
    assert table[1]["failed_refused_scheme"] == 2 and table[1]["failed_missing"] == 1  # s0 never ran here


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("<urlopen error refused_address: internal.test resolves to 10.0.0.5 (private)>", "refused_address"),
        (
            "<urlopen error refused_scheme: scheme 'file'; only http and https are fetched (redirect from http://a/)>",
            "refused_scheme",
        ),
    ],
)
def test_connect_time_refusals_keep_their_reason(message: str, reason: str) -> None:
    assert failure_reason("failed_to_download", message) == reason


# ------------------------------------------------------------------- connect time (loopback only)


def _getaddrinfo(table: dict[str, str]):
    """socket.getaddrinfo over a fixed table: names map to loopback addresses, nothing is looked up."""

    def getaddrinfo(host, port, family=0, kind=0, proto=0, flags=0):
        address = table.get(host, host)
        try:
            socket.inet_aton(address)
        except OSError:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} not in the test table") from None
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return getaddrinfo


def test_connect_checked_refuses_before_any_packet() -> None:
    internal_requests: list[str] = []
    with photo_server("127.0.0.1", internal_requests) as internal:
        port = int(internal.rsplit(":", 1)[1])
        with pytest.raises(
            RefusedConnection, match=r"refused_address: rebound\.test resolves to 127\.0\.0\.1 \(loopback\)"
        ):
            connect_checked(("rebound.test", port), 1.0, getaddrinfo=_getaddrinfo({"rebound.test": "127.0.0.1"}))
    assert internal_requests == []


def test_checked_opener_follows_allowed_redirects_and_refuses_the_rest(tmp_path) -> None:
    """A name that passes the string check but resolves to the internal server at connect time is refused;
    so are redirects to loopback, to a file and to ftp; a redirect within the mirror is followed."""
    from biasloop.data.acquisition.checked_download import build_checked_opener

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"local file that must never be read")
    internal_requests: list[str] = []
    mirror_requests: list[str] = []
    with photo_server("127.0.0.1", internal_requests) as internal, photo_server(MIRROR_HOST, mirror_requests) as mirror:
        internal_port, mirror_port = int(internal.rsplit(":", 1)[1]), int(mirror.rsplit(":", 1)[1])
        names = {"public.test": MIRROR_HOST, "internal.test": "127.0.0.1"}
        opener = build_checked_opener(MIRROR, getaddrinfo=_getaddrinfo(names))

        def redirect(to: str) -> str:
            return f"http://public.test:{mirror_port}/redirect?to={quote(to, safe='')}"

        with opener.open(f"http://public.test:{mirror_port}/astronaut.jpg", timeout=5) as response:
            assert response.status == 200 and response.read(3) == b"\xff\xd8\xff"
        with opener.open(redirect(f"http://public.test:{mirror_port}/chelsea.jpg"), timeout=5) as response:
            assert response.status == 200
        refused = {
            f"http://internal.test:{internal_port}/astronaut.jpg": "refused_address",  # DNS says loopback
            f"https://internal.test:{internal_port}/astronaut.jpg": "refused_address",  # before any TLS
            redirect(f"http://internal.test:{internal_port}/astronaut.jpg"): "refused_address",
            redirect(f"http://127.0.0.1:{internal_port}/astronaut.jpg"): "refused_address",
            redirect(f"http://2130706433:{internal_port}/astronaut.jpg"): "refused_address",
            redirect(f"http://[::1]:{internal_port}/astronaut.jpg"): "refused_address",
            redirect(secret.as_uri()): "refused_scheme",
            redirect(f"ftp://127.0.0.1:{internal_port}/a.jpg"): "refused_scheme",
            secret.as_uri(): "refused_scheme",
            str(secret): "refused_scheme",
            "data:image/jpeg;base64,/9j/4AAQ": "refused_scheme",
        }
        for url, reason in refused.items():
            with pytest.raises(URLError) as caught:
                opener.open(url, timeout=5)
            assert failure_reason("failed_to_download", str(caught.value)) == reason, (url, str(caught.value))
    assert internal_requests == []
    assert sum(p.startswith("/redirect") for p in mirror_requests) == 7


def test_checked_opener_caps_the_response_size() -> None:
    """img2dataset holds each body in memory: a body over max_response_bytes fails, declared or not."""
    from biasloop.data.acquisition.checked_download import build_checked_opener

    with photo_server(MIRROR_HOST) as mirror:
        opener = build_checked_opener(MIRROR, max_response_bytes=10_000)  # the astronaut JPEG is ~80 KB
        for path in ("/astronaut.jpg", "/unsized/astronaut.jpg"):  # with a Content-Length, and without one
            with pytest.raises(URLError) as caught, opener.open(mirror + path, timeout=5) as response:
                response.read()
            assert failure_reason("failed_to_download", str(caught.value)) == "response_too_large", path
        with build_checked_opener(MIRROR, max_response_bytes=10_000_000).open(
            mirror + "/unsized/astronaut.jpg", timeout=5
        ) as response:
            assert response.read()[:3] == b"\xff\xd8\xff"


def test_checked_opener_caps_the_time_to_receive_a_body() -> None:
    """A body dripped 512 bytes every 0.2 s never trips the per-read timeout: the total cap stops it."""
    import time

    from biasloop.data.acquisition.checked_download import build_checked_opener

    with photo_server(MIRROR_HOST) as mirror:
        opener = build_checked_opener(MIRROR, max_response_seconds=1.0)
        start = time.monotonic()
        with pytest.raises(URLError) as caught, opener.open(mirror + "/drip.jpg", timeout=5) as response:
            response.read()
        assert time.monotonic() - start < 5
        assert failure_reason("failed_to_download", str(caught.value)) == "timeout"
        with opener.open(mirror + "/astronaut.jpg", timeout=5) as response:  # a prompt body is read whole
            body = response.read()
        assert body[:3] == b"\xff\xd8\xff" and len(body) > 2**16  # more than one chunk
