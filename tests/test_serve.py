"""The HTTP service, run for real with uvicorn on loopback: edits, validation, backpressure, timeouts,
disconnects, metrics and memory over 200 requests."""

import http.client
import io
import json
import resource
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch
import uvicorn

from rtcore.demo import sample_image
from rtcore.serve import create_app


class Server:
    """uvicorn in a background thread on 127.0.0.1 and an OS-chosen port; stopped by the fixture."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields, image_bytes=None):
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if image_bytes is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + image_bytes + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


FIELDS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
              num_inference_steps="4", seed="3")


def post(port, fields=FIELDS, image=True, body=None, content_type=None, timeout=60):
    if body is None:
        body, content_type = multipart(fields, _png(sample_image(64, 64)) if image else None)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/edit", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def _rss_mb():
    """Current resident set size (not the high-water mark, which earlier tests may already have set)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


@pytest.fixture(scope="module")
def server(pipe):
    srv = Server(create_app(pipe, max_concurrency=2, max_queue=8, timeout_s=60))
    yield srv
    srv.stop()


def test_healthz(server):
    status, data = get(server.port, "/healthz")
    assert status == 200 and json.loads(data)["status"] == "ok" and json.loads(data)["backend"] == "eager"


def test_edit_returns_the_pipelines_image(server, pipe):
    status, data = post(server.port)
    assert status == 200, data
    served = np.asarray(PIL.Image.open(io.BytesIO(data)))
    direct = pipe(prompt=FIELDS["prompt"], source_prompt=FIELDS["source_prompt"], image=sample_image(64, 64),
                  num_inference_steps=4, generator=torch.Generator().manual_seed(3)).images[0]
    assert np.abs(served.astype(int) - np.asarray(direct).astype(int)).max() <= 1


@pytest.mark.parametrize("kwargs,needle", [
    (dict(image=False), "image is required"),
    (dict(fields=dict(FIELDS, strength="2")), "strength"),
    (dict(fields=dict(FIELDS, num_inference_steps="many")), "num_inference_steps"),
    (dict(fields={"prompt": "a"}), "source_prompt"),
    (dict(body=b"not multipart", content_type="application/json"), "multipart"),
    (dict(body=b"--x\r\ngarbage", content_type="multipart/form-data; boundary=x"), ""),
])
def test_malformed_requests_get_4xx_with_the_message(server, kwargs, needle):
    status, data = post(server.port, **kwargs)
    assert status == 400, data
    assert needle in json.loads(data)["error"]


def test_not_an_image(server):
    body, ctype = multipart(FIELDS, b"GIF89a-but-not-really")
    status, data = post(server.port, body=body, content_type=ctype)
    assert status == 400 and "not an image" in json.loads(data)["error"]


def test_concurrent_requests_all_succeed(server):
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: post(server.port)[0], range(6)))
    assert results == [200] * 6


def test_backpressure_429_when_the_queue_is_full(pipe):
    srv = Server(create_app(pipe, max_concurrency=1, max_queue=1, timeout_s=60))
    try:
        slow = dict(FIELDS, num_inference_steps="60", strength="1.0")
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(lambda _: post(srv.port, fields=slow)[0], range(6)))
        assert statuses.count(429) >= 1 and statuses.count(200) >= 1 and set(statuses) <= {200, 429}
        assert post(srv.port)[0] == 200  # the queue drains
    finally:
        srv.stop()


def test_timeout_504_and_the_worker_is_freed(pipe):
    srv = Server(create_app(pipe, max_concurrency=1, max_queue=2, timeout_s=0.3))
    try:
        status, data = post(srv.port, fields=dict(FIELDS, num_inference_steps="400", strength="1.0"))
        assert status == 504 and "within" in json.loads(data)["error"]
        start = time.time()
        assert post(srv.port, fields=dict(FIELDS, num_inference_steps="2"))[0] == 200
        assert time.time() - start < 5  # the abandoned edit stopped at its next step
    finally:
        srv.stop()


def test_client_disconnect_mid_request(server):
    body, ctype = multipart(dict(FIELDS, num_inference_steps="200", strength="1.0"), _png(sample_image(64, 64)))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /edit HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype.encode() +
                 f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(0.3)
    sock.close()  # gone before the answer
    time.sleep(0.5)
    assert post(server.port)[0] == 200
    _, metrics = get(server.port, "/metrics")
    assert b'rtcore_errors_total{kind="disconnected"}' in metrics


def test_metrics(server):
    post(server.port)
    status, data = get(server.port, "/metrics")
    text = data.decode()
    assert status == 200
    assert 'rtcore_request_seconds_count{status="200"}' in text
    assert "rtcore_queue_depth 0.0" in text and 'rtcore_errors_total{kind="bad_request"}' in text


def test_200_requests_with_bounded_memory(server):
    fields = dict(FIELDS, num_inference_steps="1", strength="1.0")
    for _ in range(20):  # warm-up: allocator pools, caches
        post(server.port, fields=fields)
    before = _rss_mb()
    for _ in range(200):
        assert post(server.port, fields=fields)[0] == 200
    grown_mb = _rss_mb() - before
    print(f"resident memory grew {grown_mb:.1f} MiB over 200 requests")
    assert grown_mb < 50
