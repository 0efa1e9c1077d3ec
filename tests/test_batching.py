"""Dynamic batching (rtcore.batching), the one policy of both front ends: compatible requests share a pipeline call
and each still equals that request edited alone; a bad item fails alone; rtcore serve collects batches itself."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch
from http_helpers import FIELDS, Server, get, post

from rtcore import CycleDiffusion
from rtcore.batching import EditResult, edit_batch, group_key
from rtcore.demo import sample_image
from rtcore.serve import create_app
from rtcore.service import EditRequest


def alone(pipe, fields, image=None):
    """The request edited by itself, as a pixel array."""
    kwargs = {k: v for k, v in fields.items() if k != "seed"}
    kwargs["num_inference_steps"] = int(kwargs.get("num_inference_steps", 50))
    for name in ("strength", "guidance_scale"):
        if name in kwargs:
            kwargs[name] = float(kwargs[name])
    out = pipe(image=image or sample_image(64, 64), generator=torch.Generator().manual_seed(int(fields["seed"])),
               **kwargs).images[0]
    return np.asarray(out).astype(int)


def test_one_bad_item_fails_only_its_own_request(pipe):
    """A group whose call fails runs item by item: the others still get their images, each as if alone."""
    common = dict(source_prompt="a horse", num_inference_steps=4)
    items = [EditRequest(sample_image(64, 64), dict(common, prompt="a dog"), 1),
             EditRequest(sample_image(64, 64), dict(common, prompt=42), 2),  # not a prompt: TypeError
             EditRequest(sample_image(64, 64), dict(common, prompt="a cat"), 3)]
    sizes = []
    results = edit_batch(pipe, items, sizes.append)
    assert isinstance(results[1], TypeError) and "prompt" in str(results[1])
    assert sizes == [3, 1, 1, 1]  # the failed call of three, then each alone
    for k in (0, 2):
        assert isinstance(results[k], EditResult) and results[k].batch_size == 1
        got = np.asarray(PIL.Image.open(io.BytesIO(results[k].png))).astype(int)
        assert np.abs(got - alone(pipe, dict(items[k].kwargs, seed=items[k].seed))).max() <= 1


def test_only_requests_with_the_same_settings_and_size_share_a_call():
    a = EditRequest(sample_image(64, 64), dict(FIELDS, num_inference_steps=4), 1)
    assert group_key(a) == group_key(EditRequest(sample_image(64, 64), dict(FIELDS, num_inference_steps=4,
                                                                           prompt="other"), 2))
    assert group_key(a) != group_key(EditRequest(sample_image(64, 48), dict(FIELDS, num_inference_steps=4), 1))
    assert group_key(a) != group_key(EditRequest(sample_image(64, 64), dict(FIELDS, num_inference_steps=4,
                                                                           cache_interval=3), 1))
    # a setting left out is the call's default: the page names every setting, an API client may name none
    named = dict(FIELDS, num_inference_steps=50, strength=0.8, cache_interval=1, guidance_cutoff=1.0)
    assert group_key(EditRequest(sample_image(64, 64), named, 1)) == group_key(
        EditRequest(sample_image(64, 64), {"prompt": "a", "source_prompt": "b"}, 2))


@pytest.fixture(scope="module")
def batching_server(pipe):
    # a long wait window, so that requests sent together are certain to meet
    srv = Server(create_app(pipe, max_concurrency=1, max_queue=8, max_batch=4, batch_wait_s=0.5))
    yield srv
    srv.stop()


def test_served_requests_are_batched_and_each_equals_its_request_alone(batching_server, pipe):
    fields = [dict(FIELDS, seed=str(s), prompt=f"a dog number {s}") for s in range(11, 15)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda f: post(batching_server.port, fields=f, headers=True), fields))
    sizes = []
    for f, (status, data, headers) in zip(fields, results):
        assert status == 200, data
        sizes.append(int(headers["x-rtcore-batch-size"]))
        assert "denoise;dur=" in headers["server-timing"]
        served = np.asarray(PIL.Image.open(io.BytesIO(data))).astype(int)
        assert np.abs(served - alone(pipe, f)).max() <= 1
    assert max(sizes) > 1  # they did share a call
    _, metrics = get(batching_server.port, "/metrics")
    assert b"rtcore_batch_size_bucket" in metrics


def test_a_request_with_other_settings_is_not_batched_with_them(batching_server, pipe):
    fields = [dict(FIELDS, seed="1"), dict(FIELDS, seed="2"), dict(FIELDS, seed="3", strength="0.5")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda f: post(batching_server.port, fields=f, headers=True), fields))
    assert [r[0] for r in results] == [200] * 3
    assert int(results[2][2]["x-rtcore-batch-size"]) == 1
    served = np.asarray(PIL.Image.open(io.BytesIO(results[2][1]))).astype(int)
    assert np.abs(served - alone(pipe, fields[2])).max() <= 1


def test_a_failing_request_in_a_served_batch_fails_alone(pipe):
    """Two requests of one group share a call; the call fails on one of them, so both are rerun alone: the good one
    gets its image, the bad one its own error (a pipeline that refuses one prompt stands in for any such item)."""

    class RefusesOnePrompt(CycleDiffusion):
        def __call__(self, prompt, *args, **kwargs):
            if "refused" in (prompt if isinstance(prompt, list) else [prompt]):
                raise ValueError("prompt: 'refused' is refused")
            return super().__call__(prompt, *args, **kwargs)

    srv = Server(create_app(RefusesOnePrompt(pipe.engines), max_batch=4, batch_wait_s=0.5))
    try:
        fields = [dict(FIELDS, seed="5"), dict(FIELDS, seed="6", prompt="refused")]
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda f: post(srv.port, fields=f, headers=True), fields))
        assert results[0][0] == 200 and results[0][2]["x-rtcore-batch-size"] == "1"  # rerun alone
        served = np.asarray(PIL.Image.open(io.BytesIO(results[0][1]))).astype(int)
        assert np.abs(served - alone(pipe, fields[0])).max() <= 1
        assert results[1][0] == 400 and "'refused' is refused" in json.loads(results[1][1])["error"]
        _, metrics = get(srv.port, "/metrics")
        assert b"rtcore_batch_size_count 3.0" in metrics  # the failed call of two, then each alone
    finally:
        srv.stop()


@pytest.mark.parametrize("max_batch,wait_s,named", [(0, 0.01, "max_batch"), (8, -1, "batch_wait_s"),
                                                    (8, 11, "batch_wait_s")])
def test_batching_options_are_checked_before_a_model_loads(max_batch, wait_s, named):
    from rtcore.serve import serve

    with pytest.raises(ValueError, match=named):  # the model does not exist: refused before it is looked for
        serve("no-such-model", max_batch=max_batch, batch_wait_s=wait_s)
    with pytest.raises(ValueError, match=named):
        serve("no-such-model", max_batch=max_batch, batch_wait_s=wait_s, ray=True)
