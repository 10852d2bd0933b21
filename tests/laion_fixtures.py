"""A loopback HTTP server serving real photos and typical failures, and a tiny LAION-style metadata parquet.

The photos ship with scikit-image: ``astronaut`` (Eileen Collins, one face), the same photo mirrored
(one face), two astronauts side by side (two faces) and ``chelsea`` (a cat: no face). Failures: a
missing file (404), a response slower than the download timeout, an HTML page served as a ``.jpg``, and
a photo whose response carries ``X-Robots-Tag: noai`` (an opt-out img2dataset must respect), and
``/redirect?to=<url>`` (a 302 to ``<url>``), ``/unsized/<photo>`` (a body without Content-Length) and
``/drip.jpg`` (a photo sent 512 bytes every 0.2 s).

The fetch policy refuses loopback addresses, so a test that downloads from this server serves it on
127.0.0.2 (:data:`MIRROR_HOST`) and lets it in with ``laion_download.local_mirror_networks:
[127.0.0.2/32]``; a server on 127.0.0.1 then stands for an internal service that must never be reached.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import polars as pl

SLOW_SECONDS = 4.0  # the /slow.jpg response waits this long; tests use a 1 s download timeout
MIRROR_HOST = "127.0.0.2"  # the "public web" of the tests, allowed by local_mirror_networks
MIRROR_NETWORK = "127.0.0.2/32"


def jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def photos() -> dict[str, np.ndarray]:
    """The real photos by file name."""
    import skimage.data

    astronaut = skimage.data.astronaut()
    return {
        "astronaut.jpg": astronaut,
        "mirrored.jpg": np.ascontiguousarray(astronaut[:, ::-1]),
        "two_astronauts.jpg": np.concatenate([astronaut, astronaut[:, ::-1]], axis=1),
        "chelsea.jpg": skimage.data.chelsea(),
    }


@contextmanager
def photo_server(host: str = MIRROR_HOST, requests: list[str] | None = None) -> Iterator[str]:
    """Serve the photos and failures on ``host`` (a free port); yields the base URL.

    ``requests``, when given, receives the path of every request the server gets.
    """
    bodies = {f"/{name}": jpeg(image) for name, image in photos().items()}
    optout = bodies["/astronaut.jpg"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet test output
            pass

        def send_body(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if requests is not None:
                requests.append(self.path)
            path = self.path.split("?")[0]
            if path == "/redirect":
                self.send_response(302)
                self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/drip.jpg":  # every read within any socket timeout, the whole body in minutes
                body = bodies["/astronaut.jpg"]
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 512):
                        self.wfile.write(body[start : start + 512])
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:
                    pass  # the client gave up
            elif path.startswith("/unsized/") and path.removeprefix("/unsized") in bodies:
                self.send_response(200)  # no Content-Length: the body ends when the connection closes
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(bodies[path.removeprefix("/unsized")])
                self.close_connection = True
            elif path in bodies:
                self.send_body(bodies[path], "image/jpeg")
            elif path == "/optout.jpg":
                self.send_body(optout, "image/jpeg", {"X-Robots-Tag": "noai"})
            elif path == "/page.jpg":
                self.send_body(b"<!doctype html><html><body><h1>Not here</h1></body></html>", "text/html")
            elif path == "/slow.jpg":
                time.sleep(SLOW_SECONDS)
                try:
                    self.send_body(optout, "image/jpeg")
                except OSError:
                    pass  # the client gave up
            else:
                self.send_error(404)

    try:
        server = ThreadingHTTPServer((host, 0), Handler)
    except OSError as exc:  # 127.0.0.2 is loopback on Linux, not on every system
        import pytest

        pytest.skip(f"cannot serve on {host}: {exc}")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# (path, caption, what should happen); occupations: engineer, nurse
METADATA_ROWS = (
    ("/astronaut.jpg", "A photo of a nurse at work", "nurse: one face, kept"),
    ("/astronaut.jpg", "Nurse portrait, smiling", "nurse: duplicate URL, dropped by the selection"),
    ("/mirrored.jpg", "Portrait of an engineer", "engineer: one face, kept"),
    ("/two_astronauts.jpg", "Two engineers at the launch site", "engineer: two faces, filtered"),
    ("/chelsea.jpg", "The engineer's cat", "engineer: no face, filtered"),
    ("/missing.jpg", "An engineer at a desk", "engineer: http_404"),
    ("/slow.jpg", "A nurse on shift", "nurse: timeout"),
    ("/page.jpg", "Nurses on the ward", "nurse: HTML page, not_an_image"),
    ("/optout.jpg", "Nurse with a stethoscope", "nurse: X-Robots-Tag noai, opted_out"),
    ("/astronaut.jpg", "A bowl of fruit", "no occupation: not selected"),
)


def write_metadata(base_url: str, folder: Path) -> list[Path]:
    """Two LAION-style parquet files (``URL``, ``TEXT``, ``WIDTH``) listing :data:`METADATA_ROWS`."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            "URL": [base_url + p for p, _, _ in METADATA_ROWS],
            "TEXT": [c for _, c, _ in METADATA_ROWS],
            "WIDTH": [512] * len(METADATA_ROWS),
        }
    )
    paths = [folder / "part-00000.parquet", folder / "part-00001.parquet"]
    frame[:5].write_parquet(paths[0])
    frame[5:].write_parquet(paths[1])
    return paths
