"""One pipeline, many threads: concurrent calls with their own prompts, images and seeds equal serial calls."""

import threading

import numpy as np
import pytest
import torch

from rtcore.demo import sample_image

THREADS = 8


def _requests():
    # distinct prompts of distinct token lengths: the fast tokenizer's padding/truncation state is what used to race
    return [dict(prompt=f"a {'very ' * k}red car number {k}", source_prompt=f"a black car {'seen ' * (7 - k)}",
                 image=sample_image(64, 64).rotate(45 * k), seed=100 + k) for k in range(THREADS)]


def _edit(pipe, request):
    return pipe(prompt=request["prompt"], source_prompt=request["source_prompt"], image=request["image"],
                num_inference_steps=4, strength=1.0, output_type="np",
                generator=torch.Generator().manual_seed(request["seed"])).images


def _run_together(pipe, requests):
    """Every call starts at once (a barrier), so their tokenizer and engine calls overlap."""
    barrier = threading.Barrier(len(requests))
    results, errors = [None] * len(requests), []

    def worker(k):
        barrier.wait()
        try:
            results[k] = _edit(pipe, requests[k])
        except Exception as err:  # noqa: BLE001  (reported below with its thread)
            errors.append((k, repr(err)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_concurrent_calls_with_distinct_requests_equal_serial_calls(request, backend):
    engine = request.getfixturevalue("pipe") if backend == "eager" else request.getfixturevalue("onnx_pipe")
    requests = _requests()
    serial = [_edit(engine, r) for r in requests]
    for _ in range(6):  # several rounds: the race needs the tokenizer calls of two threads to overlap
        together = _run_together(engine, requests)
        for k, (a, b) in enumerate(zip(serial, together)):
            np.testing.assert_array_equal(a, b, err_msg=f"thread {k} differs from its serial run")


def test_tokenizer_from_many_threads_equals_serial(pipe):
    """The tokenizer alone, hammered: each thread's ids equal the serial ids of its own prompts."""
    from rtcore.prompts import tokenize

    prompts = [[f"{'word ' * (k % 13)}{k}", " ".join(["long"] * (60 + k % 40))] for k in range(64)]
    serial = [tokenize(pipe.engines.tokenizer, p) for p in prompts]
    barrier = threading.Barrier(THREADS)
    mismatches = []

    def worker(offset):
        barrier.wait()
        for k in range(offset, len(prompts), THREADS):
            try:
                ids = tokenize(pipe.engines.tokenizer, prompts[k])
            except Exception as err:  # noqa: BLE001  (the race used to raise inside transformers)
                mismatches.append((k, repr(err)))
                continue
            if not torch.equal(ids, serial[k]):
                mismatches.append((k, "different ids"))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    with pytest.warns(UserWarning, match="truncated"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not mismatches
