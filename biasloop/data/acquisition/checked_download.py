"""img2dataset with the fetch policy enforced where it connects (:mod:`.fetch_policy`).

img2dataset 1.47 fetches each image with ``urllib.request.urlopen(request, timeout=...)``
(``img2dataset.downloader.download_image``), in worker processes its distributor starts (spawned
``multiprocessing`` workers, Spark executors, Ray workers). ``urlopen`` uses the process's installed
opener, whose defaults also open ``file:``, ``ftp:`` and ``data:`` URLs and follow environment proxies.

:class:`CheckedDownloader` is img2dataset's ``Downloader`` that installs :func:`build_checked_opener` in
the process that runs a shard, before it downloads anything. The instance is pickled to the workers by
reference to this module, so every distributor's workers import it (they need ``biasloop`` installed).
The checked opener:

- opens ``http`` and ``https`` only: any other scheme is refused (``refused_scheme``) by the opener itself,
  not by a missing handler; every URL, redirect targets included, first passes :func:`url_refusal`;
- connects through :func:`connect_checked`: the host is resolved once, the connection is refused if any
  address is not allowed, and the socket connects to the checked address (no second lookup);
- follows redirects (301, 302, 303, 307, 308) only to URLs the policy allows; each is a new connection,
  checked again;
- reads at most ``max_response_bytes`` of a response (img2dataset reads a whole body into memory): a
  larger one fails as ``response_too_large``, by its ``Content-Length`` before reading, else once the
  limit is passed; a body that takes over ``max_response_seconds`` to arrive fails as ``timeout`` (the
  ``timeout`` param bounds each network read, not a body dripped one byte at a time);
- ignores ``http_proxy``/``https_proxy``: through a proxy the address actually reached would be the
  proxy's choice, which cannot be checked here.

A refusal reaches img2dataset as an exception whose text starts with its reason (``<urlopen error
refused_address: ...>``), which img2dataset records as the URL's ``error_message``.
"""

from __future__ import annotations

import functools
import http.client
import importlib
import os
import socket
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.error import URLError
from urllib.parse import urljoin

# img2dataset imports albumentations, whose import asks PyPI for a newer version unless this is set.
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
from img2dataset.downloader import Downloader  # noqa: E402

from biasloop.data.acquisition.fetch_policy import (
    GetAddrInfo,
    Network,
    connect_checked,
    parse_networks,
    url_refusal,
)


def _checked_connection(connection_class: type, allowed_networks: Sequence[Network], getaddrinfo: GetAddrInfo):
    def make(host, **kwargs):
        connection = connection_class(host, **kwargs)
        # http.client's connect() opens its socket with self._create_connection (socket.create_connection
        # by default): replacing it puts the check under every HTTP and HTTPS connection.
        connection._create_connection = functools.partial(
            connect_checked, allowed_networks=allowed_networks, getaddrinfo=getaddrinfo
        )
        return connection

    return make


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allowed_networks: Sequence[Network], getaddrinfo: GetAddrInfo) -> None:
        super().__init__()
        self._connection = _checked_connection(http.client.HTTPConnection, allowed_networks, getaddrinfo)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allowed_networks: Sequence[Network], getaddrinfo: GetAddrInfo) -> None:
        super().__init__()
        self._connection = _checked_connection(http.client.HTTPSConnection, allowed_networks, getaddrinfo)

    def https_open(self, req):
        extra = {} if getattr(self, "_check_hostname", None) is None else {"check_hostname": self._check_hostname}
        return self.do_open(self._connection, req, context=self._context, **extra)


class _CheckedRedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowed_networks: Sequence[Network]) -> None:
        super().__init__()
        self.allowed_networks = allowed_networks

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            refusal = url_refusal(urljoin(req.full_url, location), self.allowed_networks)
            if refusal is not None:
                fp.close()
                raise URLError(f"{refusal} (redirect from {req.full_url})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


RESPONSE_TOO_LARGE = "response_too_large"
_CHUNK = 2**16


class _ResponseLimits(urllib.request.BaseHandler):
    handler_order = 400  # before HTTPErrorProcessor (1000): every response, whatever its status

    def __init__(self, max_bytes: int | None, max_seconds: float | None) -> None:
        self.max_bytes, self.max_seconds = max_bytes, max_seconds

    def http_response(self, request, response):
        limit, seconds = self.max_bytes, self.max_seconds
        if limit is None and seconds is None:
            return response
        declared = response.headers.get("Content-Length", "")
        if limit is not None and declared.strip().isdigit() and int(declared) > limit:
            response.close()
            raise URLError(
                f"{RESPONSE_TOO_LARGE}: Content-Length {int(declared):,} bytes is over {limit:,} "
                "(laion_download.max_response_bytes)"
            )
        deadline = None if seconds is None else time.monotonic() + seconds
        # read1: at most one read of the socket, so the clock is checked between drips (read(n) on the
        # buffered socket waits for all n bytes)
        read = getattr(response, "read1", response.read)
        received = 0

        def checked_read(amt: int = -1) -> bytes:
            # img2dataset calls read() once for the whole body: read it in chunks, so that neither a huge
            # body nor one dripped a byte at a time (each read within the socket timeout) holds the worker
            nonlocal received
            parts = []
            wanted = None if amt is None or amt < 0 else amt
            while wanted is None or wanted > 0:
                size = _CHUNK if wanted is None else min(wanted, _CHUNK)
                chunk = read(size)
                received += len(chunk)
                if limit is not None and received > limit:
                    response.close()
                    raise URLError(
                        f"{RESPONSE_TOO_LARGE}: the body is over {limit:,} bytes (laion_download.max_response_bytes)"
                    )
                if deadline is not None and time.monotonic() > deadline:
                    response.close()
                    raise URLError(f"timed out: the body took over {seconds:g} s (laion_download.max_response_seconds)")
                if not chunk:
                    break
                parts.append(chunk)
                if wanted is not None:
                    wanted -= len(chunk)
            return b"".join(parts)

        response.read = checked_read
        return response

    https_response = http_response


class _RefuseOtherSchemes(urllib.request.BaseHandler):
    def unknown_open(self, req):
        raise URLError(str(url_refusal(req.full_url)))


class CheckedOpener(urllib.request.OpenerDirector):
    """An opener that refuses every URL :func:`url_refusal` refuses, before opening anything."""

    def __init__(self, allowed_networks: Sequence[Network]) -> None:
        super().__init__()
        self.allowed_networks = tuple(allowed_networks)

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):  # noqa: SLF001
        url = fullurl.full_url if isinstance(fullurl, urllib.request.Request) else fullurl
        refusal = url_refusal(url, self.allowed_networks)
        if refusal is not None:
            raise URLError(str(refusal))
        return super().open(fullurl, data, timeout)


def build_checked_opener(
    allowed_networks: Sequence[Network] = (),
    getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    max_response_bytes: int | None = None,
    max_response_seconds: float | None = None,
) -> CheckedOpener:
    """An opener for ``http``/``https`` to allowed addresses only (see the module docstring).

    ``max_response_bytes`` and ``max_response_seconds`` cap each response body's size and the time to
    receive it after its headers (None: no cap).

    ``getaddrinfo`` resolves hosts at connect time (tests pass a dict-backed one: no real lookups).

    No ``ProxyHandler``, ``FileHandler``, ``FTPHandler`` or ``DataHandler``: other schemes reach
    ``_RefuseOtherSchemes`` (should the URL check ever be bypassed) and are refused.
    """
    opener = CheckedOpener(allowed_networks)
    for handler in (
        _RefuseOtherSchemes(),
        _CheckedHTTPHandler(allowed_networks, getaddrinfo),
        _CheckedHTTPSHandler(allowed_networks, getaddrinfo),
        urllib.request.HTTPDefaultErrorHandler(),
        _CheckedRedirectHandler(allowed_networks),
        urllib.request.HTTPErrorProcessor(),
        _ResponseLimits(max_response_bytes, max_response_seconds),
    ):
        opener.add_handler(handler)
    return opener


class CheckedDownloader(Downloader):
    """img2dataset's ``Downloader`` whose shard downloads go through :func:`build_checked_opener`.

    ``allowed_networks`` are strings (``"10.1.2.0/24"``) so the instance pickles to any worker;
    ``max_response_bytes`` / ``max_response_seconds`` cap each response body.
    """

    def __init__(
        self,
        *args,
        allowed_networks: Sequence[str] = (),
        max_response_bytes: int | None = None,
        max_response_seconds: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.allowed_networks = tuple(str(n) for n in allowed_networks)
        self.max_response_bytes, self.max_response_seconds = max_response_bytes, max_response_seconds

    def __call__(self, row):
        # img2dataset calls urllib.request.urlopen, which uses the process's installed opener: this
        # process is one of the distributor's workers, which only download.
        opener = build_checked_opener(
            parse_networks(self.allowed_networks),
            max_response_bytes=self.max_response_bytes,
            max_response_seconds=self.max_response_seconds,
        )
        urllib.request.install_opener(opener)
        return super().__call__(row)


@contextmanager
def checked_img2dataset(
    allowed_networks: Sequence[str] = (),
    max_response_bytes: int | None = None,
    max_response_seconds: float | None = None,
) -> Iterator[None]:
    """While open, :func:`img2dataset.download` builds a :class:`CheckedDownloader` instead of its own."""
    # the module, not the package attribute: img2dataset/__init__.py rebinds the name `main` to a function
    img2dataset_main = importlib.import_module("img2dataset.main")
    original = img2dataset_main.Downloader
    img2dataset_main.Downloader = functools.partial(
        CheckedDownloader,
        allowed_networks=tuple(allowed_networks),
        max_response_bytes=max_response_bytes,
        max_response_seconds=max_response_seconds,
    )
    try:
        yield
    finally:
        img2dataset_main.Downloader = original
