"""Dynamic batching of edit requests, one policy for both HTTP front ends (``rtcore serve`` and Ray Serve).

Requests that share their settings (image size, steps, strength, guidance, η, feature caching, guidance cutoff:
:func:`group_key`) run as one pipeline call with lists of prompts and images and one generator per item, so each
item equals that item edited alone: batching changes throughput, never pixels. When a batched call fails, its
requests run one by one, so a bad item fails only its own request (:func:`edit_batch`).

How requests are collected differs by front end. Ray Serve collects them itself (``serve.batch``, with the same
batch size and wait). ``rtcore serve`` uses :class:`Batcher`: each of its workers, when free, takes the oldest waiting
request and the ones that can share its call, waiting up to ``wait_s`` from that request's arrival for more, up to
``max_batch``. Under load the queue fills the batches by itself; at light load a request waits at most ``wait_s``.
"""

import asyncio
from dataclasses import dataclass, field

import anyio
import torch

from .pipeline import check_positive_int
from .service import Cancelled, EditRequest, png_bytes, stop_when

# The defaults of both front ends, chosen from docs/SERVING.md's load benchmark (the shipped model, 2 CPU cores)
MAX_BATCH, BATCH_WAIT_S = 8, 0.01
MAX_BATCH_WAIT_S = 10  # a longer window would hold a lone request for longer than most edits take
GROUP_KEYS = ("strength", "num_inference_steps", "guidance_scale", "source_guidance_scale", "eta", "cache_interval",
              "guidance_cutoff")


def check_batching(max_batch, batch_wait_s):
    """The batching options of both front ends: ValueError naming the one refused."""
    check_positive_int(max_batch, "max_batch")
    if not 0 <= batch_wait_s <= MAX_BATCH_WAIT_S:
        raise ValueError(f"batch_wait_s must be in [0, {MAX_BATCH_WAIT_S}] seconds, got {batch_wait_s!r}")


@dataclass
class EditResult:
    png: bytes
    timings: dict = field(default_factory=dict)  # seconds per stage of the pipeline call that made it
    batch_size: int = 1  # requests in that call


def _call_defaults():
    """The defaults of CycleDiffusion.__call__ for GROUP_KEYS: a setting a request leaves out is that default."""
    import inspect

    from .cycle_diffusion import CycleDiffusion

    parameters = inspect.signature(CycleDiffusion.__call__).parameters
    return {name: parameters[name].default for name in GROUP_KEYS}


DEFAULTS = _call_defaults()


def settings(item: EditRequest):
    """A request's GROUP_KEYS settings, each the request's own or the pipeline call's default."""
    return {name: item.kwargs.get(name, DEFAULTS[name]) for name in GROUP_KEYS}


def group_key(item: EditRequest):
    """What requests must share to run as one call: the image size and every setting of GROUP_KEYS (a setting left
    out equals it given as its default, so a request from the page, which names them all, batches with one that
    does not)."""
    return item.image.size, tuple(settings(item).values())


def edit_group(pipe, items):
    """Requests of one group → one :class:`EditResult` each, from one pipeline call; it stops early only when every
    member has been cancelled."""
    out = pipe(prompt=[item.kwargs["prompt"] for item in items],
               source_prompt=[item.kwargs["source_prompt"] for item in items],
               image=[item.image for item in items],
               generator=[torch.Generator().manual_seed(item.seed) for item in items],
               output_type="pil", callback=stop_when(*(item.cancel for item in items)), **settings(items[0]))
    return [EditResult(png_bytes(image), dict(out.timings), len(items)) for image in out.images]


def edit_batch(pipe, items, observe_batch=None):
    """Any requests → one result per request, an :class:`EditResult` or the exception that request alone raised.
    Compatible requests share a call; ``observe_batch(size)`` is told the size of every call made."""
    groups = {}
    for k, item in enumerate(items):
        groups.setdefault(group_key(item), []).append(k)
    results = [None] * len(items)
    for members in groups.values():
        try:
            if observe_batch:
                observe_batch(len(members))
            for k, result in zip(members, edit_group(pipe, [items[k] for k in members])):
                results[k] = result
        except Exception:  # noqa: BLE001  one bad item (a prompt, NaN latents) must not fail the others
            for k in members:
                if items[k].cancel.is_set():  # its client is gone or its deadline passed: nothing to rerun for
                    results[k] = Cancelled("the edit was cancelled")
                    continue
                try:
                    if observe_batch and len(members) > 1:
                        observe_batch(1)
                    results[k] = edit_group(pipe, [items[k]])[0]
                except Exception as err:  # noqa: BLE001  (returned to this request only, mapped by the status table)
                    results[k] = err
    return results


@dataclass(eq=False)  # compared by identity: a request's image is not compared pixel by pixel
class _Waiting:
    item: EditRequest
    key: tuple
    arrival: float
    future: asyncio.Future


class Batcher:
    """``rtcore serve``'s collector: ``await submit(item)`` → that request's :class:`EditResult` (or its error
    raised), with up to ``max_batch`` compatible requests per call of ``run_batch(items)`` (:func:`edit_batch` on
    the pipeline) and ``workers`` calls at once, each on a worker thread. A request whose client is gone or whose
    deadline passed before it ran (its cancel event set) is dropped from the queue."""

    def __init__(self, run_batch, max_batch=MAX_BATCH, wait_s=BATCH_WAIT_S, workers=1):
        self.run_batch, self.max_batch, self.wait_s, self.workers = run_batch, max_batch, wait_s, workers
        self.queue = []  # _Waiting, in arrival order
        self.changed = None  # an asyncio.Event on the serving loop: made with the workers, at the first request

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        if self.changed is None:
            self.changed = asyncio.Event()
            self._tasks = [loop.create_task(self._work()) for _ in range(self.workers)]
        waiting = _Waiting(item, group_key(item), loop.time(), loop.create_future())
        self.queue.append(waiting)
        self.changed.set()
        return await waiting.future

    async def _next_batch(self):
        loop = asyncio.get_running_loop()
        while True:
            self.queue = [w for w in self.queue if not w.item.cancel.is_set() and not w.future.done()]
            if not self.queue:
                self.changed.clear()
                await self.changed.wait()
                continue
            first = self.queue[0]
            members = [w for w in self.queue if w.key == first.key][:self.max_batch]
            wait = first.arrival + self.wait_s - loop.time()
            if len(members) >= self.max_batch or wait <= 0:
                self.queue = [w for w in self.queue if w not in members]
                return members
            self.changed.clear()
            with anyio.move_on_after(wait):
                await self.changed.wait()

    async def _work(self):
        while True:
            batch = await self._next_batch()
            try:
                results = await anyio.to_thread.run_sync(self.run_batch, [w.item for w in batch])
            except Exception as err:  # noqa: BLE001  run_batch returns errors per item; this is the unexpected rest
                results = [err] * len(batch)
            for waiting, result in zip(batch, results):
                if waiting.future.done():  # its handler gave up (deadline, disconnect)
                    continue
                if isinstance(result, Exception):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)
