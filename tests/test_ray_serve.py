"""Ray Serve scale-out, for real: a local Ray instance on the CPU, two replicas, batched requests over HTTP."""

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch

from rtcore.demo import sample_image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from test_serve import FIELDS, _png, multipart  # noqa: E402  (the same HTTP contract as rtcore serve)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(tiny_sd1):
    from rtcore.ray_serve import app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app(str(tiny_sd1), num_replicas=2, max_batch_size=4, batch_wait_timeout_s=0.2), route_prefix="/")
    yield port
    serve.shutdown()
    ray.shutdown()


def _post(port, fields):
    import http.client

    body, ctype = multipart(fields, _png(sample_image(64, 64)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/edit", body=body, headers={"Content-Type": ctype})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_healthz_and_edit_through_ray(ray_app, pipe):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", ray_app, timeout=60)
    conn.request("GET", "/healthz")
    assert json.loads(conn.getresponse().read())["status"] == "ok"
    status, data = _post(ray_app, FIELDS)
    assert status == 200, data
    direct = pipe(prompt=FIELDS["prompt"], source_prompt=FIELDS["source_prompt"], image=sample_image(64, 64),
                  num_inference_steps=4, generator=torch.Generator().manual_seed(3)).images[0]
    served = np.asarray(PIL.Image.open(io.BytesIO(data))).astype(int)
    assert np.abs(served - np.asarray(direct).astype(int)).max() <= 1


def test_batched_requests_equal_requests_alone(ray_app, pipe):
    seeds = [11, 12, 13, 14, 15, 16]
    fields = [dict(FIELDS, seed=str(s), prompt=f"a dog number {s}") for s in seeds]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda f: _post(ray_app, f), fields))
    for f, (status, data) in zip(fields, results):
        assert status == 200, data
        alone = pipe(prompt=f["prompt"], source_prompt=f["source_prompt"], image=sample_image(64, 64),
                     num_inference_steps=4, generator=torch.Generator().manual_seed(int(f["seed"]))).images[0]
        served = np.asarray(PIL.Image.open(io.BytesIO(data))).astype(int)
        assert np.abs(served - np.asarray(alone).astype(int)).max() <= 1


def test_bad_request_is_400(ray_app):
    status, data = _post(ray_app, dict(FIELDS, strength="3"))
    assert status == 400 and "strength" in json.loads(data)["error"]
