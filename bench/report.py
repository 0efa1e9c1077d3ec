"""bench_edit reports: a Markdown table, a PNG chart of time per stage per pipeline, and regressions vs an old run."""

STAGE_ORDER = ("text_encode", "vae_encode", "denoise", "vae_decode", "host_overhead")
REGRESSION = 1.10  # slower by more than 10% (median) is a regression


def _fmt(value, spec=".1f", missing="—"):
    return missing if value is None else format(value, spec)


def markdown(report):
    s, h = report["settings"], report["header"]
    lines = [f"CycleDiffusion edit, preset {s['preset']}, {s['size']}×{s['size']}, batch {s['batch']}, {s['steps']} "
             f"steps × strength {s['strength']}, guidance {s['guidance_scale']}, {s['dtype']}, "
             f"{h['device_name']} ({h['device']}, {s['threads']} CPU thread(s)), {h['date']}, rev {h['git_revision']}",
             "", f"| pipeline | median ms | p20 ms | p80 ms | × {s['baseline'] or 'baseline'} | max abs err vs rtcore "
             "eager | PSNR dB | build s | load s | first edit ms | device MiB | host RSS MiB |", "|---" * 12 + "|"]
    for name, r in report["results"].items():
        if "error" in r:  # it could not build, load or edit: the others were measured without it
            lines.append(f"| {name} | **FAILED**: {r['error']} |" + " |" * 10)
            continue
        err = f"{r['max_abs_err_vs_rtcore_eager']:.1e}" + ("" if r["correct"] else " **WRONG**")
        lines.append(f"| {name} | {r['median_ms']:.1f} | {r['p20_ms']:.1f} | {r['p80_ms']:.1f} | "
                     f"**{_fmt(r['ratio_vs_baseline'], '.3f')}** | {err} | {_fmt(r.get('psnr_db_vs_rtcore_eager'))} | "
                     f"{_fmt(r.get('build_ms', 0) / 1e3)} | {r['cold_start_ms'] / 1e3:.1f} | {r['warmup_ms']:.0f} | "
                     f"{_fmt(r['device_memory_mb'], '.0f')} | {_fmt(r['host_rss_mb'], '.0f')} |")
    fast = {n: r for n, r in measured(report).items() if r.get("ratio_vs_exact")}
    if fast:
        exact_tflop = {n: r["unet_tflop_per_edit"] for n, r in measured(report).items() if r.get("speed") == "exact"}
        lines += ["", "Faster settings (rtcore.approximations) against the exact edit of the same engine, in the same "
                  "run: time, UNet FLOPs per edit (counted) and the pixel change (the max abs error column above "
                  "compares each with rtcore eager at the same setting).", "",
                  "| pipeline | median ms | × exact time | UNet TFLOP per edit | × exact FLOPs | PSNR vs exact (dB) |",
                  "|---|---|---|---|---|---|"]
        for name, r in fast.items():
            exact = exact_tflop.get(name.rsplit(" ", 1)[0])
            flops = exact and r["unet_tflop_per_edit"] / exact
            lines.append(f"| {name} | {r['median_ms']:.0f} | **{r['ratio_vs_exact']:.3f}** | "
                         f"{r['unet_tflop_per_edit']:.3g} | {_fmt(flops, '.3f')} | {_fmt(r['psnr_db_vs_exact'])} |")
    many = {n: r["encode_edit"] for n, r in measured(report).items() if r.get("encode_edit")}
    if many:
        lines += ["", "Encode once, edit many: `encode` (the source half) once, then `edit` toward "
                  f"{next(iter(many.values()))['edits']} other target prompts, each timed.", "",
                  "| pipeline | encode ms | edit ms (median) | edit ms (p20–p80) |", "|---|---|---|---|"]
        for name, e in many.items():
            lines.append(f"| {name} | {e['encode_ms']:.0f} | {e['edit_ms']['median_ms']:.0f} | "
                         f"{e['edit_ms']['p20_ms']:.0f}–{e['edit_ms']['p80_ms']:.0f} |")
    isolated = {n: r["isolated"] for n, r in report["results"].items() if r.get("isolated")}
    if isolated:
        lines += ["", "Each pipeline alone in a fresh process (engines built, caches warm): cached load, first and "
                  "second edit, peak resident memory of the process.", "",
                  "| pipeline | cached load s | first edit s | edit s | peak RSS MiB |", "|---|---|---|---|---|"]
        for name, i in isolated.items():
            lines.append(f"| {name} | " + (f"failed: {i['error']} | | | |" if "error" in i else
                         f"{i['load_s']:.1f} | {i['first_edit_s']:.1f} | {i['edit_s']:.1f} | "
                         f"{_fmt(i['peak_rss_mb'], '.0f')} |"))
    lines += ["", "Memory: what each pipeline added, loaded and after one edit (device: the driver's total − free, so "
              "ONNX Runtime, TensorRT and CUDA-graph pools count; host: resident set size).",
              "", "Stage breakdown (ms; diffusers' denoise is its UNet calls, the rest of its loop is host overhead):",
              "", "| pipeline | " + " | ".join(STAGE_ORDER) + " | per step | denoise TFLOP/s | denoise % of peak |",
              "|---|" + "---|" * (len(STAGE_ORDER) + 3)]
    for name, r in measured(report).items():
        st = r["stages_ms"]
        frac = (r["fraction_of_peak"] or {}).get("denoise")
        lines.append(f"| {name} | " + " | ".join(f"{st[k]:.1f}" for k in STAGE_ORDER) +
                     f" | {st['denoise_per_step']:.2f} | {_fmt(r['tflops'].get('denoise'), '.2f')} | "
                     f"{_fmt(None if frac is None else 100 * frac, '.0f')} |")
    if report.get("regressions") is not None:
        lines += ["", "Regressions vs the compared run: " + ("; ".join(report["regressions"]) or "none")]
    return "\n".join(lines)


def measured(report):
    """The results of the pipelines that ran (a failed one carries only its error)."""
    return {name: r for name, r in report["results"].items() if "error" not in r}


def chart(report, path):
    """A horizontal stacked bar per pipeline: median time split by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(measured(report))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.6 * len(names)))
    left = [0.0] * len(names)
    for stage in STAGE_ORDER:
        values = [report["results"][n]["stages_ms"][stage] for n in names]
        ax.barh(names, values, left=left, label=stage)
        left = [a + b for a, b in zip(left, values)]
    s = report["settings"]
    ax.set_xlabel("ms per edit (median)")
    ax.set_title(f"{s['preset']} {s['size']}×{s['size']}, {s['dtype']}, {report['header']['device_name']}")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # outside the bars
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(old, new):
    """Pipelines that got slower than REGRESSION× their old median, or that became wrong."""
    flagged = []
    for name, r in new["results"].items():
        before = old.get("results", {}).get(name)
        if "error" in r:
            flagged.append(f"{name}: failed ({r['error']})")
            continue
        if before is None or "error" in before:
            continue
        if r["median_ms"] > REGRESSION * before["median_ms"]:
            flagged.append(f"{name}: {before['median_ms']:.1f} → {r['median_ms']:.1f} ms")
        if before.get("correct") and not r["correct"]:
            flagged.append(f"{name}: was correct, now wrong ({r['max_abs_err_vs_rtcore_eager']:.1e})")
    return flagged
