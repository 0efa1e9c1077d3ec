"""Ray Serve scale-out, for real: a local Ray instance on the CPU, batched requests over HTTP, and the same answers
as rtcore serve for the same bad requests."""

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch

from rtcore.demo import sample_image

pytestmark = pytest.mark.slow  # a local Ray instance per module

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from http_helpers import FIELDS, Server, get, pixel_bomb, png, post, post_chunked  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One small replica for the limits: no batching, nothing queued, a short deadline. rtcore serve gets the same
# settings (max_concurrency 1 = one running batch of one), so both must answer every request alike.
LIMITS = dict(max_queue=0, timeout_s=5.0, max_upload_bytes=1 << 20)


@pytest.fixture(scope="module")
def ray_app(tiny_sd1):
    from rtcore.ray_serve import app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app(str(tiny_sd1), num_replicas=2, max_batch_size=4, batch_wait_timeout_s=0.2, num_cpus=0.5),
              name="batched", route_prefix="/")
    serve.run(app(str(tiny_sd1), num_replicas=1, max_batch_size=1, num_cpus=0.5, **LIMITS), name="small",
              route_prefix="/small")
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def local_app(pipe):
    from rtcore.serve import create_app

    srv = Server(create_app(pipe, max_concurrency=1, max_batch=1, **LIMITS))
    yield srv.port
    srv.stop()


def test_healthz_and_edit_through_ray(ray_app, pipe):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", ray_app, timeout=60)
    conn.request("GET", "/healthz")
    assert json.loads(conn.getresponse().read())["status"] == "ok"
    status, data = post(ray_app, timeout=120)
    assert status == 200, data
    direct = pipe(prompt=FIELDS["prompt"], source_prompt=FIELDS["source_prompt"], image=sample_image(64, 64),
                  num_inference_steps=4, generator=torch.Generator().manual_seed(3)).images[0]
    served = np.asarray(PIL.Image.open(io.BytesIO(data))).astype(int)
    assert np.abs(served - np.asarray(direct).astype(int)).max() <= 1


def test_batched_requests_equal_requests_alone(ray_app, pipe):
    seeds = [11, 12, 13, 14, 15, 16]
    fields = [dict(FIELDS, seed=str(s), prompt=f"a dog number {s}") for s in seeds]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda f: post(ray_app, fields=f, timeout=120), fields))
    for f, (status, data) in zip(fields, results):
        assert status == 200, data
        alone = pipe(prompt=f["prompt"], source_prompt=f["source_prompt"], image=sample_image(64, 64),
                     num_inference_steps=4, generator=torch.Generator().manual_seed(int(f["seed"]))).images[0]
        served = np.asarray(PIL.Image.open(io.BytesIO(data))).astype(int)
        assert np.abs(served - np.asarray(alone).astype(int)).max() <= 1


def test_bad_request_is_400(ray_app):
    status, data = post(ray_app, fields=dict(FIELDS, strength="3"))
    assert status == 400 and "strength" in json.loads(data)["error"]


def _big_image():
    return png(sample_image(128, 128))


# (name, POST arguments) → the status both front ends must give
BAD_REQUESTS = {
    "bad-number": (400, dict(fields=dict(FIELDS, strength="3"))),
    "not-an-image": (400, dict(image=b"GIF89a-but-not-really")),
    "no-image": (400, dict(image=False)),
    "pixel-bomb": (413, dict(image=pixel_bomb())),
    "body-over-limit": (413, dict(image=b"x" * (2 << 20))),
    "nan": (500, dict(fields=dict(FIELDS, guidance_scale="1e38"))),
    "deadline": (504, dict(fields=dict(FIELDS, num_inference_steps="999", strength="1.0"), image=_big_image())),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_ray_and_rtcore_serve_give_the_same_status(ray_app, local_app, name):
    want, kwargs = BAD_REQUESTS[name]
    served = post(local_app, **kwargs)
    rayed = post(ray_app, path="/small/edit", **kwargs)
    assert served[0] == rayed[0] == want, (served, rayed)
    assert json.loads(served[1])["error"] == json.loads(rayed[1])["error"]


def test_chunked_oversized_body_is_413_on_both(ray_app, local_app):
    assert post_chunked(local_app, 4 << 20) == 413
    assert post_chunked(ray_app, 4 << 20, path="/small/edit") == 413


def test_backpressure_is_429_on_both(ray_app, local_app):
    slow = dict(FIELDS, num_inference_steps="40", strength="1.0")  # long enough to overlap, within the deadline
    for port, path in ((local_app, "/edit"), (ray_app, "/small/edit")):
        with ThreadPoolExecutor(max_workers=5) as pool:
            statuses = list(pool.map(lambda _, port=port, path=path: post(port, fields=slow, path=path)[0], range(5)))
        assert statuses.count(429) >= 1 and statuses.count(200) >= 1 and set(statuses) <= {200, 429}, (path, statuses)


def test_metrics_through_ray(ray_app):
    post(ray_app, path="/small/edit", fields=dict(FIELDS, strength="3"))
    status, data = get(ray_app, "/small/metrics")
    assert status == 200 and b'rtcore_errors_total{kind="bad_request"}' in data


@pytest.mark.parametrize("prefix", ["", "/small"])
def test_ray_serves_the_page_and_its_samples(ray_app, prefix):
    status, page = get(ray_app, f"{prefix}/")
    assert status == 200 and b'<form id="edit-form">' in page
    status, samples = get(ray_app, f"{prefix}/samples")
    assert status == 200 and len(json.loads(samples)) == 12
    status, scene = get(ray_app, f"{prefix}/samples/3.png")
    assert status == 200 and scene.startswith(b"\x89PNG")
