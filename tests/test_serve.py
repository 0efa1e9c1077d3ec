"""The HTTP service, run for real with uvicorn on loopback: edits, validation, backpressure, timeouts,
disconnects, metrics and memory over 200 requests."""

import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch
from http_helpers import FIELDS, Server, get, multipart, pixel_bomb, png, post, post_chunked, rss_mb

from rtcore.approximations import from_preset
from rtcore.demo import sample_image
from rtcore.serve import create_app


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


def test_the_preset_field_reaches_the_pipeline(server, pipe):
    status, data = post(server.port, fields=dict(FIELDS, preset="fast"))
    assert status == 200, data
    served = np.asarray(PIL.Image.open(io.BytesIO(data)))
    direct = pipe(prompt=FIELDS["prompt"], source_prompt=FIELDS["source_prompt"], image=sample_image(64, 64),
                  num_inference_steps=4, generator=torch.Generator().manual_seed(3), **from_preset("fast")).images[0]
    assert np.abs(served.astype(int) - np.asarray(direct).astype(int)).max() <= 1


@pytest.mark.parametrize("kwargs,needle", [
    (dict(fields=dict(FIELDS, preset="fastest")), "preset must be one of"),
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
    srv = Server(create_app(pipe, max_concurrency=1, max_queue=1, timeout_s=60, max_batch=1))  # 2 admitted at most
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
    body, ctype = multipart(dict(FIELDS, num_inference_steps="200", strength="1.0"), png(sample_image(64, 64)))
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


@pytest.mark.slow  # a soak: 200 requests
def test_200_requests_with_bounded_memory(server):
    fields = dict(FIELDS, num_inference_steps="1", strength="1.0")
    for _ in range(20):  # warm-up: allocator pools, caches
        post(server.port, fields=fields)
    before = rss_mb()
    for _ in range(200):
        assert post(server.port, fields=fields)[0] == 200
    grown_mb = rss_mb() - before
    print(f"resident memory grew {grown_mb:.1f} MiB over 200 requests")
    assert grown_mb < 50


def test_pixel_bomb_is_refused_from_its_header(server):
    """A few-KB PNG declaring 12000x12000 pixels: 413 naming the limit, fast, without decoding it."""
    bomb = pixel_bomb()
    assert len(bomb) < 200_000
    before = rss_mb()
    start = time.perf_counter()
    status, data = post(server.port, image=bomb)
    elapsed = time.perf_counter() - start
    grown = rss_mb() - before
    print(f"pixel bomb: {status} in {elapsed:.2f} s, resident memory +{grown:.0f} MiB")
    assert status == 413 and "12000x12000" in json.loads(data)["error"] and "4194304" in json.loads(data)["error"]
    assert elapsed < 2 and grown < 200


def test_oversized_bodies_are_refused_with_or_without_content_length(server):
    big = b"x" * ((20 << 20) + 1)
    body, ctype = multipart(FIELDS, big)
    assert post(server.port, body=body, content_type=ctype)[0] == 413
    assert post_chunked(server.port, 24 << 20) == 413  # no Content-Length: counted as it streams in
    assert post(server.port)[0] == 200  # and the service carries on


def test_a_nan_edit_is_a_500_naming_the_cause(server):
    status, data = post(server.port, fields=dict(FIELDS, guidance_scale="1e38"))  # overflows the latents
    assert status == 500 and "NaN" in json.loads(data)["error"]


def test_unexpected_errors_are_500_without_a_traceback():
    from rtcore.service import status_of

    status, kind, message = status_of(KeyError("secret internal detail"))
    assert (status, kind) == (500, "internal") and "secret" not in message and "KeyError" in message


@pytest.mark.parametrize("fields,needle", [
    (dict(FIELDS, seed="-1"), "seed"),
    (dict(FIELDS, seed=str(2**64)), "seed"),
    (dict(FIELDS, strength="nan"), "strength"),
    (dict(FIELDS, eta="inf"), "eta"),
    (dict(FIELDS, guidance_scale="inf"), "guidance_scale"),
    (dict(FIELDS, num_inference_steps="1e9"), "num_inference_steps"),
    (dict(FIELDS, num_inference_steps="100000"), "num_inference_steps"),
])
def test_odd_numbers_in_the_form_are_400(server, fields, needle):
    status, data = post(server.port, fields=fields)
    assert status == 400 and needle in json.loads(data)["error"], data


def test_the_page_and_its_sample_scenes(server):
    status, page = get(server.port, "/")
    assert status == 200 and b"<script>" in page and b"http" not in page.split(b"<script>")[1]  # nothing fetched
    status, listing = get(server.port, "/samples")
    samples = json.loads(listing)
    assert status == 200 and len(samples) == 12 and samples[0]["caption"] != samples[0]["suggested_prompt"]
    status, scene = get(server.port, "/samples/0.png")
    assert status == 200 and PIL.Image.open(io.BytesIO(scene)).size == (64, 64)
    status, missing = get(server.port, "/samples/12.png")
    assert status == 404 and "there are 12" in json.loads(missing)["error"]
