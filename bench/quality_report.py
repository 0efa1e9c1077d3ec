"""The report of the edit-quality benchmark (rtcore.bench.quality): its Markdown tables and its plot, made from the
JSON report alone, so that a report can be redrawn without measuring again and the measurements stay apart from
how they are shown."""


def markdown(report):
    lines = [f"Model `{report['model']}`, {report['images']} held-out scenes, {report['steps']} steps, guidance "
             f"{report['guidance_scale']}, seed {report['seed']}; {report['device_name']}, "
             f"{report['torch_threads']} threads, {report['date']}.", "",
             f"- VAE reconstruction PSNR: {report['vae_psnr_db']:.2f} dB",
             f"- text-to-image reads as prompted: colour and shape {report['text_to_image']['colour_and_shape']:.0%} "
             f"(colour {report['text_to_image']['colour']:.0%}, shape {report['text_to_image']['shape']:.0%}, "
             f"background {report['text_to_image']['background']:.0%})", "",
             "| edit | method | strength | success | kept | PSNR kept (dB) | object IoU | centre shift (px) |",
             "|---|---|---|---|---|---|---|---|"]

    def f(value, spec):
        return "—" if value is None else format(value, spec)

    for r in report["edits"]:
        lines.append(f"| {r['kind']} | {r['method']} | {r['strength']:.2f} | {r['success']:.0%} | {r['kept']:.0%} | "
                     f"{f(r['psnr_kept'], '.1f')} | {f(r.get('iou'), '.2f')} | {f(r.get('shift'), '.2f')} |")
    shift = report.get("layout_shift")
    if shift:
        lines += ["", "One-word prompt change from the same noise (text-to-image, deterministic DDIM): how far the "
                  "object moves when only the named attribute changes.", "",
                  "| changed word | centre shift (px) | mask IoU |", "|---|---|---|"]
        lines += [f"| {kind} | {f(v['shift'], '.1f')} | {f(v['iou'], '.2f')} |" for kind, v in shift.items()]
    change = report.get("latent_change")
    if change:
        lines += ["", f"VAE latent distance of a colour change, relative to removing the object: "
                  f"{change['colour_vs_object']:.2f} ("
                  + ", ".join(f"{bg} {v:.2f}" for bg, v in change["colour_vs_object_by_background"].items())
                  + f"; shape change: {change['shape_vs_object']:.2f}); cosine of the "
                  f"object's latent signal across colours: {change['object_cosine_across_colours']:.2f}. By latent "
                  "channel, the mean squared change of an edit as a fraction of the channel's variance: colour "
                  + ", ".join(f"{v:.3f}" for v in change["colour_change_by_channel"]) + "; background "
                  + ", ".join(f"{v:.3f}" for v in change["background_change_by_channel"]) + "."]
    if report.get("colour_guidance"):
        lines += ["", "| colour edit, cycle: guidance | strength | success | kept | PSNR kept (dB) | object IoU | "
                  "centre shift (px) |", "|---|---|---|---|---|---|---|"]
        for r in report["colour_guidance"]:
            lines.append(f"| {r['guidance_scale']:g} | {r['strength']:.2f} | {r['success']:.0%} | {r['kept']:.0%} | "
                         f"{f(r['psnr_kept'], '.1f')} | {f(r['iou'], '.2f')} | {f(r['shift'], '.2f')} |")
    colour = [r for r in report["edits"] if r["kind"] == "colour" and r["method"] == "cycle"]
    colour += [r for r in report.get("colour_guidance", []) if r["guidance_scale"] != report["guidance_scale"]]
    if colour and "by_background" in colour[0]:
        backgrounds = list(colour[0]["by_background"])
        lines += ["", "Colour edits (cycle) by the source's background: success / object IoU (scenes).", "",
                  "| guidance | strength | " + " | ".join(backgrounds) + " |", "|---|---|" + "---|" * len(backgrounds)]
        for r in colour:
            cells = [f"{v['success']:.0%} / {f(v['iou'], '.2f')} ({v['n']})" for v in r["by_background"].values()]
            lines.append(f"| {r.get('guidance_scale', report['guidance_scale']):g} | {r['strength']:.2f} | "
                         + " | ".join(cells) + " |")
    denoising = report.get("denoising_by_background")
    if denoising:
        parts = {bg: v for bg, v in denoising.items() if bg != "timesteps"}
        lines += ["", "The UNet by background: ε-prediction error (mean squared) on the scenes' own captions / colour "
                  "conditioning (RMS change of the prediction when the colour word changes), at timestep t.", "",
                  "| t | " + " | ".join(f"{bg} ({v['n']})" for bg, v in parts.items()) + " |",
                  "|---|" + "---|" * len(parts)]
        for k, t in enumerate(denoising["timesteps"]):
            lines.append(f"| {t} | " + " | ".join(f"{v['error'][k]:.4f} / {v['colour_conditioning'][k]:.3f}"
                                                  for v in parts.values()) + " |")
    if report.get("approximations"):
        lines += ["", approximations_markdown(report)]
    if report["drift"]:
        lines += ["", "| precision | edit | PSNR vs fp32 (dB) | max abs (of 255) | success | success fp32 |",
                  "|---|---|---|---|---|---|"]
        for r in report["drift"]:
            lines.append(f"| {r['precision']} | {r['kind']} | {r['psnr_vs_fp32_db']:.1f} | {r['max_abs_vs_fp32']} | "
                         f"{r['success']:.0%} | {r['success_fp32']:.0%} |")
    return "\n".join(lines) + "\n"


# The bar a faster setting must clear against the exact edit, at every strength, on colour and shape edits
SUCCESS_POINTS, PSNR_DB, IOU = 0.02, 1.0, 0.03


def approximation_deltas(report):
    """Per setting: its UNet FLOPs per edit (fraction of exact, at the middle strength) and its worst colour and
    shape edit against exact over the strengths: success lost, PSNR kept lost (dB), object IoU lost; and whether it
    clears SUCCESS_POINTS / PSNR_DB / IOU everywhere."""
    rows = report["approximations"]
    exact = {(r["kind"], r["strength"]): r for r in rows if r["setting"] == "exact"}
    strengths = sorted({r["strength"] for r in rows})
    middle = strengths[len(strengths) // 2]
    out = {}
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name and r["kind"] in ("colour", "shape")]
        base = [exact[(r["kind"], r["strength"])] for r in mine]
        success = max(b["success"] - r["success"] for r, b in zip(mine, base))
        psnr = max((b["psnr_kept"] or 0) - (r["psnr_kept"] or 0) for r, b in zip(mine, base))
        iou = max((b.get("iou") or 0) - (r.get("iou") or 0) for r, b in zip(mine, base))
        flops = next(r["unet_flops_fraction"] for r in rows if r["setting"] == name and r["strength"] == middle)
        out[name] = {"unet_flops_fraction": flops, "success_lost": success, "psnr_kept_lost_db": psnr,
                     "iou_lost": iou, "clears": success <= SUCCESS_POINTS and psnr <= PSNR_DB and iou <= IOU}
    return out


def approximations_markdown(report):
    def f(value, spec):
        return "—" if value is None else format(value, spec)

    lines = [f"CycleDiffusion with feature caching and guidance cutoff (rtcore.approximations), "
             f"{report['approximation_steps']} steps: the worst colour or shape edit over the strengths against "
             f"exact (bar: success within {SUCCESS_POINTS:.0%}, PSNR kept within {PSNR_DB:g} dB, IoU within {IOU}).",
             "", "| setting | UNet FLOPs (× exact) | success lost | PSNR kept lost (dB) | IoU lost | clears the bar |",
             "|---|---|---|---|---|---|"]
    for name, d in approximation_deltas(report).items():
        lines.append(f"| {name} | {d['unet_flops_fraction']:.2f} | {d['success_lost']:+.0%} | "
                     f"{d['psnr_kept_lost_db']:+.2f} | {d['iou_lost']:+.3f} | {'yes' if d['clears'] else 'no'} |")
    lines += ["", "| setting | edit | strength | success | kept | PSNR kept (dB) | object IoU | centre shift (px) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["approximations"]:
        lines.append(f"| {r['setting']} | {r['kind']} | {r['strength']:.2f} | {r['success']:.0%} | {r['kept']:.0%} | "
                     f"{f(r['psnr_kept'], '.1f')} | {f(r.get('iou'), '.2f')} | {f(r.get('shift'), '.2f')} |")
    return "\n".join(lines)


def plot_approximations(report, path):
    """Success and object IoU of colour and shape edits against UNet FLOPs per edit, one line per strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["approximations"]
    strengths = sorted({r["strength"] for r in rows})
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    for col, kind in enumerate(("colour", "shape")):
        for row, (key, label) in enumerate((("success", "success rate"), ("iou", "object IoU"))):
            ax = axes[row][col]
            for strength in strengths:
                points = sorted((r["unet_flops_fraction"], r.get(key) or 0, r["setting"]) for r in rows
                                if r["kind"] == kind and r["strength"] == strength)
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"strength {strength:g}")
                for x, y, name in points:
                    if strength == strengths[0]:
                        ax.annotate(name, (x, y), fontsize=6, rotation=30)
            ax.set_title(f"{kind} edits")
            ax.set_xlabel("UNet FLOPs per edit (× exact)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in report["edits"]))  # in the order measured
    methods = list(dict.fromkeys(r["method"] for r in report["edits"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for method, marker in zip(methods, "osd"):
            rows = [r for r in report["edits"] if r["kind"] == kind and r["method"] == method]
            ax.plot([r["success"] for r in rows], [r["psnr_kept"] for r in rows], marker=marker, label=method)
            for r in rows:
                ax.annotate(f"{r['strength']:.2f}", (r["success"], r["psnr_kept"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_title(f"{kind} edits")
        # at least 0.8 to 1 wide: where every method succeeds 99-100%, a point's difference must not fill the axis
        ax.set_xlim(min(ax.get_xlim()[0], 0.8), 1.02)
        ax.set_xlabel("success rate")
        ax.set_ylabel("PSNR of what should stay (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
