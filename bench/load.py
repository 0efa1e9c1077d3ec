"""``rtcore bench load``: a real ``rtcore serve`` (and with --ray, Ray Serve with 1 and 2 replicas) on loopback,
driven by N concurrent clients for each N of --concurrency: latency percentiles, images/s, the share of 429/504,
the server's resident memory and CPU use.

    python -m rtcore.bench.load --model rtcore-shapes --concurrency 1,2,4,8,16 --out bench_out/load
    rtcore bench load --model engines/sd15-ov-int8 --size 256 --steps 20 --requests 24 --max-batch 4

Each server configuration (--max-batch, and --max-batch 1 as the unbatched baseline unless --no-baseline) is
started as its own process and driven with the same requests. Clients are closed loops (each sends its next request
when the last one is answered), as in Triton's perf_analyzer's concurrency mode; each run stops by itself after
--requests requests or --seconds seconds, whichever comes first. The requests are a mix: held-out scenes of the
shipped model's world with their captions, edited to another colour or shape, over a few settings groups
(SETTINGS), so that not every request can share a batch. Nothing is sent anywhere but 127.0.0.1.

Writes load.json, load.md and load.png (latency and throughput against concurrency, per configuration).
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .common import header

SETTINGS = (  # the settings groups of the mix: requests of one group can share a pipeline call
    {"num_inference_steps": "50", "strength": "0.55", "guidance_scale": "3"},
    {"num_inference_steps": "50", "strength": "0.7", "guidance_scale": "5"},
    {"num_inference_steps": "50", "strength": "0.55", "guidance_scale": "3", "preset": "fast"},
)


def request_mix(n, size=64, steps=None):
    """``n`` multipart bodies: held-out shapes scenes (resized to ``size``), their captions, each edited to another
    colour or shape, cycling through SETTINGS (``steps`` overrides their step count)."""
    from rtcore import shapes
    from rtcore.service import png_bytes

    bodies = []
    for k, scene in enumerate(shapes.held_out(n)):
        kind = ("colour", "shape")[k % 2]
        values = [v for v in (shapes.COLOURS if kind == "colour" else shapes.SHAPES) if v != getattr(scene, kind)]
        target = shapes.with_attribute(scene, kind, values[k % len(values)])
        fields = {"source_prompt": scene.caption, "prompt": target.caption, "seed": str(k),
                  **SETTINGS[k % len(SETTINGS)]}
        if steps:
            fields["num_inference_steps"] = str(steps)
        image = shapes.image(scene).resize((size, size)) if size != shapes.SIZE else shapes.image(scene)
        bodies.append(_multipart(fields, png_bytes(image)))
    return bodies


def _multipart(fields, png):
    boundary = "rtcore-load-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="scene.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server's process tree, read from /proc -----------------------------------------------------------------


def _children(pid):
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def process_tree(pid):
    """``pid`` and every process under it (Ray's replicas are processes of their own)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
    return total / 1024


def cpu_seconds(pids):
    """User + system CPU seconds of the processes so far (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


# -- servers ------------------------------------------------------------------------------------------------------


class ServerProcess:
    """``rtcore serve`` (or ``--ray``) in a process of its own on 127.0.0.1, until stop()."""

    def __init__(self, model, options, ready_s=300):
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "rtcore", "serve", str(model), "--host", "127.0.0.1",
                                         "--port", str(self.port), *options],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + ready_s
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"rtcore serve {' '.join(options)} exited: {self.process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rtcore serve {' '.join(options)} not healthy after {ready_s} s")
            time.sleep(0.5)

    def _healthy(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # uvicorn and Ray shut down on Ctrl-C
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# -- one run: N closed-loop clients --------------------------------------------------------------------------------


def drive(port, bodies, concurrency, max_requests, max_seconds, timeout_s=600):
    """``concurrency`` clients, each posting the next body of ``bodies`` as soon as its last one is answered, until
    ``max_requests`` have been sent or ``max_seconds`` have passed. Returns [(status, latency s, batch size)]."""
    lock, sent, results = threading.Lock(), [0], []
    start = time.monotonic()

    def client():
        while True:
            with lock:
                if sent[0] >= max_requests or time.monotonic() - start >= max_seconds:
                    return
                body, ctype = bodies[sent[0] % len(bodies)]
                sent[0] += 1
            t = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
                conn.request("POST", "/edit", body=body, headers={"Content-Type": ctype})
                response = conn.getresponse()
                response.read()
                status, batch = response.status, response.getheader("X-Rtcore-Batch-Size")
                conn.close()
            except OSError:
                status, batch = 0, None  # no answer at all
            with lock:
                results.append((status, time.monotonic() - t, int(batch) if batch else None))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - start


def summarize_run(results, wall_s, cpu_s, rss_before, rss_after, concurrency):
    ok = [latency for status, latency, _ in results if status == 200]
    statuses = [status for status, _, _ in results]
    batches = [b for status, _, b in results if status == 200 and b]
    pct = (lambda q: float(np.percentile(ok, q))) if ok else (lambda q: None)
    return {"concurrency": concurrency, "requests": len(results), "ok": len(ok), "wall_s": wall_s,
            "p50_s": pct(50), "p90_s": pct(90), "p99_s": pct(99), "images_per_s": len(ok) / wall_s,
            "share_429": statuses.count(429) / len(results), "share_504": statuses.count(504) / len(results),
            "other_failures": sum(s not in (200, 429, 504) for s in statuses),
            "mean_batch": float(np.mean(batches)) if batches else None,
            "rss_before_mb": rss_before, "rss_after_mb": rss_after,
            "cpu_utilisation": cpu_s / wall_s / os.cpu_count()}


def run(model, configs, concurrency=(1, 2, 4, 8, 16), requests=48, seconds=120, size=64, steps=None, log=print):
    """Each configuration (name → ``rtcore serve`` options) started, warmed up and driven at each concurrency."""
    bodies = request_mix(32, size, steps)
    report = {**header(), "model": str(model), "size": size, "requests": requests, "seconds": seconds,
              "settings_groups": list(SETTINGS), "steps_override": steps, "configs": {}, "runs": []}
    for name, options in configs.items():
        server = ServerProcess(model, options)
        try:
            tree = process_tree(server.process.pid)
            drive(server.port, bodies[:len(SETTINGS)], 1, len(SETTINGS), seconds)  # warm-up: one of each group
            report["configs"][name] = options
            for n in concurrency:
                tree = process_tree(server.process.pid)
                rss_before, cpu_before = rss_mb(tree), cpu_seconds(tree)
                results, wall = drive(server.port, bodies, n, requests, seconds)
                tree = process_tree(server.process.pid)
                row = {"config": name, **summarize_run(results, wall, cpu_seconds(tree) - cpu_before, rss_before,
                                                        rss_mb(tree), n)}
                report["runs"].append(row)
                log(f"{name:<18} c={n:<3} {row['images_per_s']:6.2f} img/s  p50 {row['p50_s'] or 0:6.2f} s  "
                    f"p99 {row['p99_s'] or 0:6.2f} s  429 {row['share_429']:.0%}  504 {row['share_504']:.0%}  "
                    f"batch {row['mean_batch'] or 0:.1f}  cpu {row['cpu_utilisation']:.0%}")
        finally:
            server.stop()
    return report


def markdown(report):
    lines = [f"`rtcore serve` under load: model `{report['model']}`, {report['size']}² images, closed-loop clients, "
             f"each run up to {report['requests']} requests or {report['seconds']} s; {report['device_name']}, "
             f"{report['torch_threads']} threads, {report['date']}, rev {report['git_revision']}.", "",
             "| server | clients | images/s | p50 s | p90 s | p99 s | 429 | 504 | other failures | mean batch | "
             "CPU used | RSS before → after (MB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(value, spec=".2f"):
        return "—" if value is None else format(value, spec)

    for r in report["runs"]:
        lines.append(f"| {r['config']} | {r['concurrency']} | {r['images_per_s']:.2f} | {f(r['p50_s'])} | "
                     f"{f(r['p90_s'])} | {f(r['p99_s'])} | {r['share_429']:.0%} | {r['share_504']:.0%} | "
                     f"{r['other_failures']} | {f(r['mean_batch'], '.1f')} | {r['cpu_utilisation']:.0%} | "
                     f"{r['rss_before_mb']:.0f} → {r['rss_after_mb']:.0f} |")
    configs = list(report["configs"])
    if len(configs) > 1:
        lines += ["", "Images/s against the last configuration, at each concurrency:", ""]
        base = {r["concurrency"]: r["images_per_s"] for r in report["runs"] if r["config"] == configs[-1]}
        for name in configs[:-1]:
            ratios = [f"{r['concurrency']}: {r['images_per_s'] / base[r['concurrency']]:.2f}×"
                      for r in report["runs"] if r["config"] == name and base.get(r["concurrency"])]
            lines.append(f"- {name} vs {configs[-1]}: " + ", ".join(ratios))
    return "\n".join(lines) + "\n"


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in report["configs"]:
        runs = [r for r in report["runs"] if r["config"] == name]
        c = [r["concurrency"] for r in runs]
        line = lat.plot(c, [r["p50_s"] for r in runs], "o-", label=f"{name} p50")[0]
        lat.plot(c, [r["p99_s"] for r in runs], "x--", color=line.get_color(), label=f"{name} p99")
        thr.plot(c, [r["images_per_s"] for r in runs], "o-", color=line.get_color(), label=name)
    for ax, label in ((lat, "latency (s)"), (thr, "images/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"rtcore serve, {report['model']}, {report['size']}², {report['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rtcore bench load", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rtcore-shapes", help="checkpoint or engine directory to serve")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=48, help="requests per run, at most")
    parser.add_argument("--seconds", type=float, default=120, help="seconds per run, at most")
    parser.add_argument("--size", type=int, default=64, help="image side (scenes are resized to it)")
    parser.add_argument("--steps", type=int, default=None, help="override the settings groups' step counts")
    parser.add_argument("--max-batch", type=int, default=None, help="the batching server's (default: its default)")
    parser.add_argument("--batch-wait-ms", type=float, default=None)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=None,
                        help="the servers' --timeout (default: theirs, 60 s; raise it for edits that take seconds, "
                             "or a queue of them answers 504)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the --max-batch 1 server")
    parser.add_argument("--ray", action="store_true", help="also Ray Serve with 1 and 2 replicas (its batching)")
    parser.add_argument("--out", default="bench_out/load")
    args = parser.parse_args(argv)
    try:
        concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not concurrency or min(concurrency) < 1 or args.requests < 1 or args.seconds <= 0:
        parser.error("--concurrency values, --requests and --seconds must be positive")
    common = ["--max-queue", str(args.max_queue)] + (["--timeout", str(args.timeout)] if args.timeout else [])
    batching = list(common)
    if args.max_batch is not None:
        batching += ["--max-batch", str(args.max_batch)]
    if args.batch_wait_ms is not None:
        batching += ["--batch-wait-ms", str(args.batch_wait_ms)]
    configs = {"batched": batching}
    if args.ray:
        configs.update({f"ray, {n} replica{'s' if n > 1 else ''}": [*batching, "--ray", "--num-replicas", str(n)]
                        for n in (1, 2)})
    if not args.no_baseline:
        configs["unbatched"] = [*common, "--max-batch", "1"]
    report = run(args.model, configs, concurrency, args.requests, args.seconds, args.size, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(report, indent=2))
    (out / "load.md").write_text(markdown(report))
    plot(report, out / "load.png")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
