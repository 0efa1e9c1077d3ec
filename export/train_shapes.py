"""Trains rtcore-shapes, the small Stable Diffusion–layout model that ships with rtcore, on the shapes world
(rtcore.shapes), on a CPU, and writes it as a diffusers-layout folder with fp16 safetensors.

    python -m rtcore.export.train_shapes --out shapes-model      # about 55 minutes on 2 cores of an EPYC Zen 4
    python -m rtcore.export.train_shapes --out v2 --resume shapes-model --unet-steps 4000 --lr 5e-4
    python -m rtcore.export.train_shapes --out v3 --resume v2 --unet-steps 7000 --lr 5e-4 --snr-gamma 5
    python -m rtcore.export.train_shapes --out v6vae --resume v3 --fresh-vae --colour-contrast 0.01 \
        --vae-steps 2500 --unet-steps 0                           # 13 min: a new VAE (the UNet is not yet adapted)
    python -m rtcore.export.train_shapes --out v6 --resume v6vae --unet-steps 10000 --lr 1e-3 --snr-gamma 5  # 68.5 min

The last two made the shipped model (docs/QUALITY.md). ``--resume`` keeps a checkpoint's VAE and tokenizer as they
are and trains its UNet and text encoder further, with a fresh warm-up and cosine schedule; with ``--fresh-vae`` it
trains a new VAE first and adapts the resumed UNet and text encoder to its latents. ``--colour-contrast W`` trains
that VAE so that recolouring an object moves its latent less than removing the object does: each scene comes with
itself recoloured and its background alone, and the per-scene ratio of the two squared latent distances is penalised
above CONTRAST_TARGET. Without it, recolouring an object on a grey background moved the latent three times as far as
on white or black (further than removing the object), so a colour edit's noisy latent still showed the old colour
where the prompt named a new one, and colour edits on grey did not take. ``--invariant-channels K`` trains the VAE's
first K latent channels to hold the object's place alone (each scene paired with its twin, the same object
recoloured on another background, the two encoded alike there; the place channels are then made louder by an exact
rescaling); ``--gradient-weight W`` draws gradient-background scenes W times as often in the UNet stage. Both were
tried on 2026-11-30 and not shipped (docs/QUALITY.md). Its training.json records every run a checkpoint came from.

Two stages, seeded (the same command gives the same weights on the same torch build and thread count):
1. an AutoencoderKL (SD layout, 3 levels: 64×64×3 pixels ↔ 16×16×4 latents) on MSE + L1 + a small KL term
   (+ the term of ``--colour-contrast`` or ``--invariant-channels``); its scaling factor is 1 / std of the latents
   it then produces, as SD's 0.18215 was chosen;
2. a UNet2DConditionModel (cross-attention at 16² and 8²) and a small CLIP text encoder, together, on
   ε-prediction with SD's scaled-linear β schedule, the caption dropped to "" 10% of the time so classifier-free
   guidance works; the weights written are an exponential moving average.

The tokenizer is a CLIP BPE vocabulary whose merges spell each word of the world's captions as one token
(rtcore.export.tiny.tiny_vocab). Every choice of size here follows from two budgets: about an hour of training
on 2 CPU cores, and at most ~10 MB of fp16 weights in the package.
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtcore import shapes
from rtcore.metrics import colour_contrast, psnr
from rtcore.prompts import tokenize
from rtcore.schedule import DDIMConfig
from rtcore.schedule import alphas_cumprod as schedule_alphas

from .checkpoint import load_text_encoder, load_unet, load_vae, resolve
from .tiny import SCHEDULER_CONFIG, clip_config, save_model, write_json, write_model_index, write_tokenizer
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

WORDS = ("a", "on", "background", *shapes.COLOURS, *shapes.SHAPES, *shapes.BACKGROUNDS)
VAE = dict(block_out_channels=[16, 32, 64], layers_per_block=1, latent_channels=4, norm_num_groups=8,
           sample_size=shapes.SIZE, down_block_types=["DownEncoderBlock2D"] * 3,
           up_block_types=["UpDecoderBlock2D"] * 3)
UNET = dict(block_out_channels=[32, 64, 128], layers_per_block=1, attention_head_dim=4, cross_attention_dim=64,
            norm_num_groups=16, sample_size=shapes.SIZE // 4,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
# --invariant-channels: weight of the twin spread (a fraction of variance) against the pixel MSE (about 2.5e-3 at
# 32 dB): 0.1 held the spread under 0.1% but cost reconstruction (29.5 dB after 1500 steps); 0.03 leaves it room
INVARIANCE_WEIGHT = 0.03
# and then the place channels are made this many times louder than the colour channels (louder_place)
PLACE_GAIN = 2.0
# --colour-contrast: the per-scene contrast (colour_contrast) is penalised above this, a little under what white and
# black scenes had (about 0.7) in the VAE shipped before, where colour edits already took in place
CONTRAST_TARGET = 0.5
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=64, hidden_act="quick_gelu")


def render_pool(seeds):
    """Images (N, 3, 64, 64) float in [-1, 1] and captions of the scenes of ``seeds``."""
    scenes = [shapes.scene(seed) for seed in seeds]
    return shapes.pixels(scenes), [s.caption for s in scenes]


def cosine_lr(step, steps, peak, warmup=100):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def recoloured(s, rng):
    """Scene ``s`` with its object in another colour, drawn by ``rng``."""
    return shapes.with_attribute(s, "colour", str(rng.choice([c for c in shapes.COLOURS if c != s.colour])))


def twins(seeds, seed):
    """The scenes of ``seeds`` with the same object in the same place, but another colour and a random
    background: what the VAE's place channels must not tell apart (``--invariant-channels``)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in (shapes.scene(k) for k in seeds):
        t = recoloured(s, rng)
        out.append(shapes.with_attribute(t, "background", str(rng.choice(shapes.BACKGROUNDS))))
    return shapes.pixels(out)


def colour_pairs(seeds, seed):
    """For each scene of ``seeds``: the same object recoloured (same place, same background), and the background
    alone: what ``--colour-contrast`` compares the scene's latent with."""
    rng = np.random.default_rng(seed)
    scenes = [shapes.scene(k) for k in seeds]
    return shapes.pixels([recoloured(s, rng) for s in scenes]), shapes.pixels(scenes, objects=False)


def train_vae(pixels, steps, batch, lr, generator, log, twin_pixels=None, invariant=0, pairs=None,
              contrast_weight=0.0):
    vae = AutoencoderKL(VAEConfig.from_dict(dict(VAE, _class_name="AutoencoderKL")))
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    half, third = batch // 2, batch // 3
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        if invariant:  # half the batch, and the same scenes' twins
            pick = torch.randint(len(pixels), (half,), generator=generator)
            x = torch.cat([pixels[pick], twin_pixels[pick]])
        elif contrast_weight:  # a third of the batch, the same scenes recoloured, and their backgrounds alone
            pick = torch.randint(len(pairs[0]), (third,), generator=generator)
            x = torch.cat([pixels[pick], pairs[0][pick], pairs[1][pick]])
        else:
            x = pixels[torch.randint(len(pixels), (batch,), generator=generator)]
        # bf16 autocast: 1.3-2x faster on avx512_bf16 CPUs; the loss and the optimizer stay fp32
        with torch.autocast("cpu", torch.bfloat16):
            mean, std = vae.encode(x)
            z = mean + std * torch.randn(mean.shape, generator=generator)
            y = vae.decode(z).float()
        kl = 0.5 * (mean.float().pow(2) + std.float().pow(2) - 1 - 2 * std.float().clamp_min(1e-8).log()).mean()
        loss = F.mse_loss(y, x) + 0.1 * F.l1_loss(y, x) + 1e-5 * kl
        spread = contrast = torch.zeros(())
        if contrast_weight:
            per_scene = colour_contrast(*mean.float().split(third))
            # only above the target: pushed to 0, the colour would be hidden from the UNet at every noise level
            loss = loss + contrast_weight * (per_scene - CONTRAST_TARGET).clamp_min(0).mean()
            contrast = per_scene.mean()
        if invariant:
            place = mean.float()[:, :invariant]
            # what tells a scene from its twin, as a fraction of the channels' variance: shrinking them gains nothing
            spread = (place[:half] - place[half:]).pow(2).mean() / place.var()
            loss = loss + INVARIANCE_WEIGHT * spread
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae  step {step:5d}/{steps}  loss {loss.item():.5f}  kl {kl.item():.2f}  "
                f"twin spread {spread.item():.4f}  colour contrast {contrast.item():.3f}  "
                f"{time.perf_counter() - start:7.0f} s")
    return vae.eval()


@torch.no_grad()
def louder_place(vae, means, invariant, log):
    """Rescales and centres the latent channels, exactly, so that the first ``invariant`` (the place) have
    PLACE_GAIN times the std of the others (the colours), and every channel has mean 0: the encoder's mean (and
    std) of channel c times k_c minus the mean, and the decoder's input from it divided by k_c with the mean added
    back. With one scaling factor for all channels, the louder channels keep a higher SNR at every timestep, so an
    edit's noisy latent still holds the object's place where its colour is already lost."""
    stds = means.std((0, 2, 3))
    gains = torch.ones_like(stds)
    gains[:invariant] = PLACE_GAIN * stds[invariant:].mean() / stds[:invariant]
    gains[invariant:] = stds[invariant:].mean() / stds[invariant:]
    centres = gains * means.mean((0, 2, 3))
    channels = len(stds)
    vae.quant_conv.weight[:channels] *= gains.view(-1, 1, 1, 1)
    vae.quant_conv.bias[:channels] *= gains
    vae.quant_conv.bias[:channels] -= centres
    vae.quant_conv.bias[channels:] += 2 * gains.log()  # log-variance: std times the same gain
    vae.post_quant_conv.weight /= gains.view(1, -1, 1, 1)
    vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ centres
    log(f"latent channel stds {', '.join(f'{v:.3f}' for v in stds.tolist())} rescaled by "
        f"{', '.join(f'{v:.3f}' for v in gains.tolist())}, centred")


@torch.no_grad()
def encode_pool(vae, pixels, batch=256):
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        mean, std = vae.encode(pixels[i:i + batch])
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def min_snr_weight(alpha_cumprod, gamma):
    """Min-SNR-γ loss weights (Hang et al. 2023) of ε-prediction, min(SNR, γ) / SNR: 1 for the noisy timesteps,
    where shape and layout are decided, γ / SNR for the nearly clean ones, whose gradients the paper finds conflict
    with the noisy ones' and slow convergence."""
    snr = alpha_cumprod / (1 - alpha_cumprod)
    return snr.clamp(max=gamma) / snr


def sampling_weights(captions, gradient_weight):
    """Each training scene's chance of being drawn into a batch: gradient backgrounds ``gradient_weight`` times the
    others'. Gradient scenes are the hard third of the world (two tinted greys at any angle, where white and black
    are one colour); the shipped UNet's noise-prediction error on them is twice that on white or black, and its
    colour conditioning is weaker there (docs/QUALITY.md)."""
    return torch.tensor([gradient_weight if c.endswith("gradient background") else 1.0 for c in captions])


def train_unet(unet, text, means, stds, captions, tokenizer, scaling, steps, batch, lr, generator, log,
               snr_gamma=None, weights=None):
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    # the world has 36 captions: tokenize each once (with the runtime's tokenizer call), then index
    distinct = {c: k for k, c in enumerate(sorted(set(captions)))}
    distinct_ids = tokenize(tokenizer, [*distinct, ""])
    ids = distinct_ids[torch.tensor([distinct[c] for c in captions])]
    empty = distinct_ids[-1]
    # the ᾱ the runtime samples with (float32, as diffusers computes them)
    alphas_cumprod = torch.from_numpy(schedule_alphas(DDIMConfig.from_dict(SCHEDULER_CONFIG))).float()
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        if weights is None:
            pick = torch.randint(len(means), (batch,), generator=generator)
        else:
            pick = torch.multinomial(weights, batch, replacement=True, generator=generator)
        x0 = scaling * (means[pick] + stds[pick] * torch.randn(means[pick].shape, generator=generator))
        batch_ids = ids[pick].clone()
        dropped = torch.rand(batch, generator=generator) < 0.1
        batch_ids[dropped] = empty
        t = torch.randint(len(alphas_cumprod), (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = text(batch_ids).last_hidden_state
        loss = F.mse_loss(unet(zt, t, context), noise, reduction="none").mean((1, 2, 3))
        if snr_gamma:
            loss = loss * min_snr_weight(a.view(-1), snr_gamma)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))  # warm EMA: early averages do not drag in the random init
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step:5d}/{steps}  loss {loss.item():.5f}  {time.perf_counter() - start:7.0f} s")
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    return unet.eval(), text.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="new folder for the checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=30000, help="training scenes rendered once")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--held-out", type=int, default=256, help="held-out scenes of the VAE's PSNR check")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the UNet stage")
    parser.add_argument("--snr-gamma", type=float, default=None,
                        help="weight the UNet loss by min(SNR, γ)/SNR (Min-SNR-γ; 5 is the paper's): training time "
                             "goes to the noisy timesteps that decide shape and layout (default: unweighted)")
    parser.add_argument("--resume", default=None,
                        help="a checkpoint this script wrote (or 'rtcore-shapes'): keep its VAE and tokenizer, and "
                             "train its UNet and text encoder --unet-steps further")
    parser.add_argument("--fresh-vae", action="store_true",
                        help="with --resume: train a new VAE, and adapt the resumed UNet and text encoder to it")
    parser.add_argument("--invariant-channels", type=int, default=0,
                        help="train the VAE's first K latent channels to hold the object's place alone: a scene and "
                             "its twin (the same object recoloured, on another background) must encode alike there, "
                             "so an edit's noisy latent keeps the place while the prompt redraws the colour")
    parser.add_argument("--colour-contrast", type=float, default=0.0,
                        help="train the VAE so that recolouring an object moves its latent little next to removing "
                             "it: the per-scene ratio of those squared distances is added to its loss with this "
                             "weight (default 0: off), so a colour edit's noisy latent holds the object more than "
                             "its colour")
    parser.add_argument("--gradient-weight", type=float, default=1.0,
                        help="draw gradient-background scenes this many times as often as white or black ones in "
                             "the UNet stage (default 1: as the pool has them, a third)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        parser.error(f"--out {root} exists and is not empty; choose a new folder")
    if not 0 <= args.invariant_channels < VAE["latent_channels"]:
        parser.error(f"--invariant-channels must be in [0, {VAE['latent_channels']}), got {args.invariant_channels}")
    if args.fresh_vae and not args.resume:
        parser.error("--fresh-vae goes with --resume (without --resume the VAE is always trained)")
    if args.invariant_channels and args.resume and not args.fresh_vae:
        parser.error("--invariant-channels trains a VAE: with --resume, add --fresh-vae")
    if not (args.colour_contrast >= 0 and math.isfinite(args.colour_contrast)):
        parser.error(f"--colour-contrast must be a finite number >= 0, got {args.colour_contrast}")
    if args.colour_contrast and args.invariant_channels:
        parser.error("--colour-contrast and --invariant-channels are two ways to train the VAE: choose one")
    if args.colour_contrast and args.resume and not args.fresh_vae:
        parser.error("--colour-contrast trains a VAE: with --resume, add --fresh-vae")
    if not (args.gradient_weight > 0 and math.isfinite(args.gradient_weight)):
        parser.error(f"--gradient-weight must be a finite number > 0, got {args.gradient_weight}")
    if args.threads:
        torch.set_num_threads(args.threads)
    log_lines = []

    def log(line):
        print(line, flush=True)
        log_lines.append(line)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    began = time.perf_counter()
    source = resolve(args.resume) if args.resume else None
    unet_cfg, text_cfg = dict(UNET, _class_name="UNet2DConditionModel"), None
    if source:
        history = source / "training.json"
        resumed_from = json.loads(history.read_text()) if history.is_file() else {"path": str(source)}
        # the architecture goes on as it was
        unet_cfg = json.loads((source / "unet" / "config.json").read_text())
        text_cfg = json.loads((source / "text_encoder" / "config.json").read_text())
        shutil.copytree(source / "tokenizer", root / "tokenizer")
        vocab = json.loads((root / "tokenizer" / "vocab.json").read_text())
    else:
        vocab = write_tokenizer(root / "tokenizer", WORDS)
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    seeds = shapes.TRAIN_SEEDS[args.seed * args.pool:(args.seed + 1) * args.pool]
    pixels, captions = render_pool(seeds)
    twin_pixels = twins(seeds, args.seed) if args.invariant_channels else None
    pairs = colour_pairs(seeds, args.seed) if args.colour_contrast else None
    log(f"rendered {len(pixels)} training scenes in {time.perf_counter() - began:.0f} s")

    new_vae = not source or args.fresh_vae
    if new_vae:
        vae = train_vae(pixels, args.vae_steps, 32, 2e-3, generator, log, twin_pixels, args.invariant_channels,
                        pairs, args.colour_contrast)
        if args.invariant_channels:
            louder_place(vae, encode_pool(vae, pixels)[0], args.invariant_channels, log)
    else:  # the VAE (and so the latent space and its scaling factor) stays exactly as it was
        vae = load_vae(source / "vae").float()
        vae_cfg = json.loads((source / "vae" / "config.json").read_text())
        scaling = vae_cfg["scaling_factor"]
    if source:
        unet = load_unet(source / "unet").float().train()
        text = load_text_encoder(source / "text_encoder").float().train()
    else:
        unet = UNet(UNetConfig.from_dict(unet_cfg))
        text = CLIPTextModel(clip_config(TEXT, vocab))
    held_out, _ = render_pool(shapes.HELD_OUT_SEEDS[:args.held_out])
    with torch.no_grad():
        mean, _ = vae.encode(held_out)
        vae_psnr = psnr(vae.decode(mean).clamp(-1, 1), held_out, peak=2.0)  # pixels in [-1, 1]
    means, stds = encode_pool(vae, pixels)
    if new_vae:
        scaling = round(1.0 / means.std().item(), 5)
        vae_cfg = dict(VAE, _class_name="AutoencoderKL", scaling_factor=scaling)
    channel_stds = ", ".join(f"{v:.3f}" for v in means.std((0, 2, 3)).tolist())
    log(f"vae held-out PSNR {vae_psnr:.2f} dB; latent std {means.std().item():.4f} (by channel: {channel_stds}), "
        f"scaling_factor {scaling}")
    save_model(root / "vae", vae.half(), vae_cfg)
    vae_s = time.perf_counter() - began

    # weight 1 draws uniformly with randint, as before the option existed: earlier commands give the same weights
    weights = None if args.gradient_weight == 1 else sampling_weights(captions, args.gradient_weight)
    unet, text = train_unet(unet, text, means, stds, captions, tokenizer, scaling, args.unet_steps, args.batch,
                            args.lr, generator, log, args.snr_gamma, weights)
    save_model(root / "unet", unet.half(), unet_cfg)
    # stored in fp16 like the rest, loaded in fp32: transformers would otherwise keep the stored dtype
    text_cfg = dict(text_cfg or clip_config(TEXT, vocab).to_dict(), dtype="float32")
    save_model(root / "text_encoder", text.half(), text_cfg, filename="model.safetensors")
    write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_model_index(root)
    total = time.perf_counter() - began
    write_json(root / "training.json", {
        "command": "python -m rtcore.export.train_shapes " + " ".join(sys.argv[1:] if argv is None else argv),
        "resumed_from": resumed_from if source else None,
        "seed": args.seed, "pool": args.pool, "vae_steps": args.vae_steps if new_vae else 0,
        "invariant_channels": args.invariant_channels, "colour_contrast": args.colour_contrast,
        "unet_steps": args.unet_steps, "batch": args.batch, "lr": args.lr, "snr_gamma": args.snr_gamma,
        "gradient_weight": args.gradient_weight,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "vae_seconds": round(vae_s),
        "total_seconds": round(total), "vae_held_out_psnr_db": round(vae_psnr, 2)})
    log(f"wrote {root} in {total / 60:.1f} min")
    (root / "training.log").write_text("\n".join(log_lines) + "\n")
    return root


if __name__ == "__main__":
    main()
