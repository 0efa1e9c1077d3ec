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
    if report["drift"]:
        lines += ["", "| precision | edit | PSNR vs fp32 (dB) | max abs (of 255) | success | success fp32 |",
                  "|---|---|---|---|---|---|"]
        for r in report["drift"]:
            lines.append(f"| {r['precision']} | {r['kind']} | {r['psnr_vs_fp32_db']:.1f} | {r['max_abs_vs_fp32']} | "
                         f"{r['success']:.0%} | {r['success_fp32']:.0%} |")
    return "\n".join(lines) + "\n"


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
