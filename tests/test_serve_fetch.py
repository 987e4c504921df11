"""Image URL fetching: public addresses only, every redirect checked, size and time bounded.

A real HTTP server on 127.0.0.1 serves the images; the tests that fetch from it pass an
address policy admitting 127.0.0.1, since the default (public addresses only) refuses it,
which is what the refusal tests check. Refusals happen before any connection, so the
private addresses named here are never contacted.
"""

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from agent.serve import ServerOptions, UrlFetcher, create_app, is_public_address
from agent.serve.fetch import ImageFetchError, ImageTooLargeError
from tests.helpers import EXPRESSION, plugin_agent, png

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.fixture(scope="module")
def site():
    """127.0.0.1:PORT with /image.png, /big, /big-undeclared, /slow, /redirect, /loop, /elsewhere, /missing."""
    image, hits = png(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            try:
                self.answer()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the fetcher stopped reading (size or time limit)

        def answer(self):
            port = self.server.server_address[1]
            routes = {
                "/redirect": (302, {"Location": "/image.png"}, b""),
                "/loop": (302, {"Location": "/loop"}, b""),
                "/elsewhere": (307, {"Location": f"http://127.0.0.2:{port}/image.png"}, b""),
            }
            if self.path == "/image.png":
                self.reply(200, {"Content-Type": "image/png"}, image)
            elif self.path == "/big":
                self.reply(200, {"Content-Length": "5000000"}, b"")
            elif self.path == "/big-undeclared":
                self.send_response(200)
                self.end_headers()  # no Content-Length: read until the limit
                self.wfile.write(b"\0" * 20_000)
            elif self.path == "/slow":
                self.send_response(200)
                self.end_headers()
                for _ in range(40):  # a byte every 0.05 s: each read is quick, the whole is slow
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif self.path == "/slow-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(60):  # a header byte every 0.05 s: each receive is quick, the headers never end
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif self.path in routes:
                self.reply(*routes[self.path])
            else:
                self.reply(404, {}, b"no")

        def reply(self, status, headers, body):
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", image, hits
    server.shutdown()
    server.server_close()


def local_fetcher(**kwargs) -> UrlFetcher:
    return UrlFetcher(**{"max_bytes": 10_000, "timeout": 5.0, "allow_address": lambda a: a == LOOPBACK, **kwargs})


def test_fetches_an_image_and_follows_redirects(site):
    url, image, _ = site
    assert local_fetcher().fetch(f"{url}/image.png") == image
    assert local_fetcher().fetch(f"{url}/redirect") == image


@pytest.mark.parametrize(
    "path, error, message",
    [
        ("/big", ImageTooLargeError, "5,000,000 bytes, over the limit of 10,000"),
        ("/big-undeclared", ImageTooLargeError, "more than the limit of 10,000 bytes"),
        ("/loop", ImageFetchError, "more than 3 redirects"),
        ("/missing", ImageFetchError, "the server answered 404"),
        ("/elsewhere", ImageFetchError, "127.0.0.2, which is not a public address"),  # every hop is checked
    ],
)
def test_refusals(site, path, error, message):
    with pytest.raises(error, match=message):
        local_fetcher().fetch(site[0] + path)


@pytest.mark.parametrize("path", ["/slow", "/slow-headers"])
def test_the_whole_fetch_is_bounded_in_time(site, path):
    start = time.monotonic()
    with pytest.raises(ImageFetchError, match="no complete answer within 0.5 s"):
        local_fetcher(timeout=0.5).fetch(f"{site[0]}{path}")
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.org/a.png", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http:///a.png", "no host"),
        ("http://example.org:99999/a.png", "invalid port"),
        ("http://[::1/a.png", "not a valid URL"),
        ("http://127.0.0.1:9/a.png", "127.0.0.1, which is not a public address"),
        ("http://localhost:9/a.png", "which is not a public address"),
        ("http://10.1.2.3/a.png", "10.1.2.3, which is not a public address"),
        ("http://[::ffff:192.168.0.1]/a.png", "::ffff:c0a8:1, which is not a public address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254, which is not a public address"),
    ],
)
def test_the_default_policy_refuses_before_connecting(url, message):
    with pytest.raises(ImageFetchError, match=message):
        UrlFetcher(max_bytes=1000).fetch(url)


def test_public_addresses():
    public = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"]
    private = ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.1.1", "100.64.0.1", "0.0.0.0",
               "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1"]
    assert [is_public_address(ipaddress.ip_address(a)) for a in public] == [True] * len(public)
    assert [is_public_address(ipaddress.ip_address(a)) for a in private] == [False] * len(private)


def test_the_server_refuses_loopback_urls_without_fetching(site):
    url, _, hits = site
    before = len(hits)
    with TestClient(create_app(plugin_agent(), ServerOptions(image_urls=True))) as client:
        assert client.get("/healthz").json()["image_urls"] is True
        response = client.post("/locate", data={"expression": EXPRESSION, "image_url": f"{url}/image.png"})
    assert response.status_code == 400 and "127.0.0.1, which is not a public address" in response.json()["detail"]
    assert len(hits) == before


def test_the_server_answers_a_fetched_image_and_413_over_the_limit(site, monkeypatch):
    from agent.serve import intake

    url, _, _ = site
    monkeypatch.setattr(intake, "UrlFetcher", lambda max_bytes, timeout: local_fetcher(max_bytes=max_bytes))
    with TestClient(create_app(plugin_agent(), ServerOptions(image_urls=True, max_upload_bytes=15_000))) as client:
        served = client.post("/locate", data={"expression": EXPRESSION, "image_url": f"{url}/redirect"})
        too_big = client.post("/locate", data={"expression": EXPRESSION, "image_url": f"{url}/big-undeclared"})
    assert served.status_code == 200 and served.json()["image_size"] == [160, 120]
    assert too_big.status_code == 413 and "more than the limit of 15,000 bytes" in too_big.json()["detail"]


def test_slow_image_urls_cannot_hold_up_uploads(site, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from agent.serve import intake

    url, _, _ = site
    monkeypatch.setattr(intake, "UrlFetcher",
                        lambda max_bytes, timeout: local_fetcher(max_bytes=max_bytes, timeout=timeout))
    options = ServerOptions(image_urls=True, url_timeout=2.0)
    with TestClient(create_app(plugin_agent(), options)) as client, ThreadPoolExecutor(8) as clients:
        slow = [clients.submit(client.post, "/locate", data={"expression": EXPRESSION,
                                                             "image_url": f"{url}/slow-headers"})
                for _ in range(6)]  # more than the fetch pool's four workers
        time.sleep(0.3)
        start = time.monotonic()
        upload = client.post("/locate", data={"expression": EXPRESSION}, files={"image": ("a.png", png())})
        assert upload.status_code == 200 and time.monotonic() - start < 1.5  # not behind the fetches
        answers = [future.result(timeout=10) for future in slow]
    # Each fetch was bounded by the deadline from its arrival, waiting for a free fetcher included.
    assert all(a.status_code == 400 and "no complete answer within 2 s" in a.json()["detail"] for a in answers)
