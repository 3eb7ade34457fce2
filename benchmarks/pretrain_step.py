"""Benchmark: one UMBIF pretraining step against MONAI's ``MaskedAutoEncoderViT`` at a matched size.

A step is what ``umbif pretrain`` does per batch: forward (under bf16 autocast where asked), backward,
gradient clipping to norm 1, an AdamW step and ``zero_grad``. Data loading and augmentation are not
timed: both models get the same ready-made random ``[B, 4, X, Y, Z]`` float32 views.

Compared, for each ``preset:patch`` config (default on CPU: tiny:16, small:16, tiny:8):

- ``umbif``: the hybrid objective as trained: two views, 4 sequences as 4 token streams of ``L``
  patches each (``4L`` patch tokens per view), mask ratio 0.75 (``L`` visible tokens + CLS per view
  in the encoder), a decoder over all ``4L`` tokens of each view, and InfoNCE between the views.
- ``monai-1ch``: ``MaskedAutoEncoderViT(in_channels=1)`` on the ``2 x 4 x B`` single-sequence volumes
  of the same two views: the same patch tokens, voxels and visible encoder tokens per step as UMBIF
  (each sequence its own image of ``L`` tokens), so its tokens/s is the per-token reference.
- ``monai-4ch``: ``MaskedAutoEncoderViT(in_channels=4)`` on the ``B`` exams of view 1, the four
  sequences as channels of one patch (``L`` tokens of ``4p^3`` voxels per exam): how MONAI's MAE is
  usually trained on multi-sequence MRI, so its exams/s is the per-sample reference.

Both MONAI models have UMBIF's encoder width/depth/heads/MLP width and decoder width/depth/heads, mask
ratio 0.75 and the same norm-pix MSE loss on the masked patches. Each config runs in a fresh
subprocess (so its peak RSS is its own): warm-up steps, then the median of ``--repeats`` timed steps.
MONAI is tried in bf16 autocast first; where that fails (MONAI 1.6.1 on CPU: its decoder's
index_put mixes float32 mask tokens with bf16 activations) the error is recorded and it runs in fp32.

Model FLOPs per step (no recomputation): ``6 x matmul weights x tokens through them`` (4 for the patch
embedding, whose input needs no gradient) plus ``12 x depth x width x n^2`` per attention sequence of
``n`` tokens, over the patch embedding, encoder, decoder and heads (:func:`step_flops`; it equals
``torch.utils.flop_counter`` plus the attention FLOPs that counter misses in CPU SDPA). On CUDA,
MFU = FLOPs / median step time / the card's dense bf16 peak (``--peak-tflops`` or a table of cards).

Run: ``.venv/bin/python benchmarks/pretrain_step.py [--configs tiny:16 small:16 tiny:8] [--batch 4]
[--repeats 5] [--device cpu|cuda]``. Needs ``einops`` (MONAI's ViT blocks import it). Prints a table and
writes ``benchmarks/results/pretrain_step.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from umbif.models.umbif import PRESETS, ModelConfig, UMBIFPretrainer, patchify, reconstruction_loss
from umbif.provenance import machine, versions
from umbif.train.pretrain import param_groups
from umbif.utils import write_text_atomic

HERE = Path(__file__).resolve().parent
SEQ = 4  # sequences per exam (T1, T1c, T2, FLAIR)
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of the cards this project may be lent
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 989.4,
                    "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}  # fmt: skip


# ----------------------------------------------------------------------------- token and FLOP counts


def geometry(kind: str, c: dict[str, Any]) -> dict[str, Any]:
    """Images, tokens and attention sequences of one step of ``kind`` for config ``c``."""
    B, p = c["batch"], c["patch"]
    L = (c["size"] // p) ** 3
    vox = c["size"] ** 3
    if kind == "umbif":
        visible = round(0.25 * SEQ * L)  # random_masking: round((1 - 0.75) * present tokens)
        n_views = 2 * B  # token streams of the encoder / decoder: one per exam and view
        return {
            "images": n_views, "in_channels": SEQ, "L": L,
            "patch_tokens": n_views * SEQ * L, "voxels": n_views * SEQ * vox,
            "encoder_seqs": n_views, "encoder_len": visible + 1, "decoder_seqs": n_views, "decoder_len": SEQ * L + 1,
            "embed_in": p**3, "embedded_tokens": n_views * SEQ * L,  # all N slots are embedded, then packed
        }  # fmt: skip
    channels, images = (1, 2 * SEQ * B) if kind == "monai-1ch" else (SEQ, B)
    visible = int(0.25 * L)  # MaskedAutoEncoderViT._masking: int(keep share * L)
    return {
        "images": images, "in_channels": channels, "L": L,
        "patch_tokens": images * L, "voxels": images * channels * vox,
        "encoder_seqs": images, "encoder_len": visible + 1, "decoder_seqs": images, "decoder_len": L + 1,
        "embed_in": channels * p**3, "embedded_tokens": images * L,
    }  # fmt: skip


def step_flops(g: dict[str, Any], m: dict[str, int]) -> float:
    """Model FLOPs of one training step: 6 per weight and token (forward 2, backward 4), 4 for the patch
    embedding (its input needs no gradient), plus attention's two ``n x n`` products per sequence.

    ``m``: encoder width ``E``, depth ``D``, MLP width ``H``; decoder ``Ed``, ``Dd``, ``Hd``; ``proj``
    (UMBIF's projection head output, 0 for MONAI).
    """
    E, D, H, Ed, Dd, Hd = m["E"], m["D"], m["H"], m["Ed"], m["Dd"], m["Hd"]
    enc_tokens = g["encoder_seqs"] * g["encoder_len"]
    dec_tokens = g["decoder_seqs"] * g["decoder_len"]
    embed = g["embed_in"] * E * g["embedded_tokens"]  # patch embedding (Linear or stride-p Conv3d)
    matmul = (
        D * (4 * E * E + 2 * E * H) * enc_tokens  # qkv, proj, fc1, fc2
        + E * Ed * enc_tokens  # decoder embedding
        + Dd * (4 * Ed * Ed + 2 * Ed * Hd) * dec_tokens
        + Ed * g["embed_in"] * dec_tokens  # prediction head
        + (E * E + E * m["proj"]) * g["encoder_seqs"] * (m["proj"] > 0)  # projection head on CLS
    )
    attention = D * E * g["encoder_seqs"] * g["encoder_len"] ** 2 + Dd * Ed * g["decoder_seqs"] * g["decoder_len"] ** 2
    return 4.0 * embed + 6.0 * matmul + 12.0 * attention


# ----------------------------------------------------------------------------- one config, in a subprocess


def build(kind: str, c: dict[str, Any]):
    """The model, its optimiser, the step function and the width numbers of ``kind``."""
    device = torch.device(c["device"])
    mc = ModelConfig(preset=c["preset"], image_size=(c["size"],) * 3, patch_size=c["patch"])
    widths = {"E": mc.dim, "D": mc.depth, "H": int(mc.dim * mc.mlp_ratio), "Ed": mc.decoder_dim,
              "Dd": mc.decoder_depth, "Hd": int(mc.decoder_dim * mc.mlp_ratio)}  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (c["batch"], SEQ, *(c["size"],) * 3)
    view1 = torch.randn(shape, generator=gen, device=device)
    view2 = torch.randn(shape, generator=gen, device=device)
    if kind == "umbif":
        model = UMBIFPretrainer(mc).to(device)
        groups = param_groups(model, 0.05)
        present = torch.ones(c["batch"], SEQ, dtype=torch.bool, device=device)
        widths["proj"] = mc.proj_dim

        def loss() -> torch.Tensor:
            return model(view1, view2, present, generator=gen)["loss"]

    else:
        from monai.networks.nets import MaskedAutoEncoderViT

        channels = 1 if kind == "monai-1ch" else SEQ
        x = torch.cat([view1, view2]).flatten(0, 1)[:, None] if channels == 1 else view1  # [images, C, X, Y, Z]
        model = MaskedAutoEncoderViT(
            in_channels=channels, img_size=c["size"], patch_size=c["patch"],
            hidden_size=mc.dim, mlp_dim=widths["H"], num_layers=mc.depth, num_heads=mc.heads, masking_ratio=0.75,
            decoder_hidden_size=mc.decoder_dim, decoder_mlp_dim=widths["Hd"], decoder_num_layers=mc.decoder_depth,
            decoder_num_heads=mc.decoder_heads,
            # MONAI's 3-D sin-cos table needs a width divisible by 6; a learnable table costs the same add
            pos_embed_type="sincos" if mc.dim % 6 == 0 else "learnable",
            decoder_pos_embed_type="sincos" if mc.decoder_dim % 6 == 0 else "learnable",
        ).to(device)  # fmt: skip
        groups = [{"params": list(model.parameters()), "weight_decay": 0.05}]
        widths["proj"] = 0
        # target in MONAI's token order (conv patch embedding flattened x, y, z) with channels inside each patch
        target = patchify(x, c["patch"]).permute(0, 2, 1, 3).flatten(2)  # [images, L, C p^3]

        def loss() -> torch.Tensor:
            pred, mask = model(x)
            return reconstruction_loss(pred, target, mask.bool(), norm_pix=True)

    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95))
    amp = c["amp"] == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            value = loss()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    n_params = sum(p.numel() for p in model.parameters())
    return step, widths, n_params


def run_case(c: dict[str, Any]) -> dict[str, Any]:
    """Time one config in this process; returns its row (or ``error``)."""
    if c["threads"]:
        torch.set_num_threads(c["threads"])
    cuda = c["device"] == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 runs: TF32 matmuls

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(0)
    step, widths, n_params = build(c["kind"], c)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        mem_before = torch.cuda.memory_allocated()
    try:
        for _ in range(c["warmup"]):
            step()
        sync()
    except Exception as error:  # recorded: MONAI's MAE under CPU bf16 autocast
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    times = []
    for _ in range(c["repeats"]):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    g = geometry(c["kind"], c)
    seconds = statistics.median(times)
    flops = step_flops(g, widths)
    row = {
        "step_s": seconds, "step_s_all": times, "params": n_params, "threads": torch.get_num_threads(),
        "exams_per_s": c["batch"] / seconds, "images_per_s": g["images"] / seconds,
        "patch_tokens_per_s": g["patch_tokens"] / seconds,
        "encoder_tokens_per_s": g["encoder_seqs"] * g["encoder_len"] / seconds,
        "voxels_per_s": g["voxels"] / seconds,
        "model_flops_per_step": flops, "model_tflops_per_s": flops / seconds / 1e12,
        "geometry": g, "widths": widths,
        "peak_rss_bytes": rss_peak, "step_mem_bytes": rss_peak - rss_before,
    }  # fmt: skip
    if cuda:
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        row["step_mem_bytes"] = torch.cuda.max_memory_allocated() - mem_before
        row["gpu"] = torch.cuda.get_device_name()
        peak = c["peak_tflops"] or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in row["gpu"]), None)
        row["peak_bf16_tflops"] = peak
        row["mfu"] = flops / seconds / (peak * 1e12) if peak else None
    return row


def in_subprocess(c: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_case` in a fresh interpreter (its own peak RSS and allocator state)."""
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(c)], capture_output=True, text=True, check=False
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        return {"error": f"subprocess exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- driver


def wait_quiet(threshold: float, max_wait: float) -> list[float]:
    """Poll the 1-minute load every 20 s until it is below ``threshold`` (at most ``max_wait`` s)."""
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()
    while load[0] >= threshold and time.monotonic() < deadline:
        print(f"load {load[0]:.2f} >= {threshold}; waiting", flush=True)
        time.sleep(20)
        load = os.getloadavg()
    return list(load)


def measure(configs: list[tuple[str, int]], common: dict[str, Any], umbif_fp32: bool) -> list[dict[str, Any]]:
    """One row per model, config and precision; MONAI falls back to fp32 where bf16 autocast fails."""
    rows = []
    for preset, patch in configs:
        base = {**common, "preset": preset, "patch": patch}
        plan = [
            ("umbif", "bf16"),
            *([("umbif", "fp32")] if umbif_fp32 else []),
            ("monai-1ch", "bf16"),
            ("monai-4ch", "bf16"),
        ]
        for kind, amp in plan:
            load = os.getloadavg()[0]
            result = in_subprocess({**base, "kind": kind, "amp": amp})
            if kind != "umbif" and "error" in result:
                failure, amp = result["error"], "fp32"
                result = {**in_subprocess({**base, "kind": kind, "amp": amp}), "bf16_error": failure}
            row = {"kind": kind, "preset": preset, "patch": patch, "amp": amp, "load_1min": load, **result}
            rows.append(row)
            print(f"{kind:>10} {preset}:{patch} {amp}: "
                  + (f"{row['step_s']:.3f} s/step" if "step_s" in row else row["error"]), flush=True)  # fmt: skip
    return rows


def find(rows: list[dict[str, Any]], kind: str, config: tuple[str, int], amp: str | None = None) -> dict | None:
    for r in rows:
        if (r["kind"], r["preset"], r["patch"]) == (kind, *config) and amp in (None, r["amp"]) and "step_s" in r:
            return r
    return None


def compare(rows: list[dict[str, Any]], configs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """UMBIF over MONAI: per patch token (vs 1ch), per exam (vs 4ch), per model FLOP; > 1 means UMBIF is faster."""
    out = []
    for config in configs:
        ours, ours32 = find(rows, "umbif", config, "bf16"), find(rows, "umbif", config, "fp32")
        one, four = find(rows, "monai-1ch", config), find(rows, "monai-4ch", config)
        if ours is None or one is None or four is None:
            continue
        entry = {
            "config": "{}:{}".format(*config),
            "monai_amp": one["amp"],
            "per_token": ours["patch_tokens_per_s"] / one["patch_tokens_per_s"],
            "per_exam": ours["exams_per_s"] / four["exams_per_s"],
            "per_model_flop": ours["model_tflops_per_s"] / one["model_tflops_per_s"],
            "flops_per_token": (ours["model_flops_per_step"] / ours["geometry"]["patch_tokens"])
            / (one["model_flops_per_step"] / one["geometry"]["patch_tokens"]),
            "per_step_memory": ours["step_mem_bytes"] / one["step_mem_bytes"],
        }
        if ours32 is not None:
            entry["per_token_fp32"] = ours32["patch_tokens_per_s"] / one["patch_tokens_per_s"]
            entry["per_exam_fp32"] = ours32["exams_per_s"] / four["exams_per_s"]
        out.append(entry)
    return out


def print_tables(rows: list[dict[str, Any]], comparisons: list[dict[str, Any]], args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    print(f"\n{args.batch} exams per step, {args.size}^3, {SEQ} sequences, {args.device}, torch threads {threads}; "
          f"mem = peak {'CUDA allocation' if cuda else 'RSS'} growth over the steps")  # fmt: skip
    print(f"{'model':<10}{'config':>9}{'amp':>6}{'s/step':>9}{'exams/s':>9}{'patch tok/s':>13}{'enc tok/s':>11}"
          f"{'GFLOP/s':>9}{'mem MiB':>9}" + (f"{'MFU':>7}" if cuda else ""))  # fmt: skip
    for r in rows:
        name = f"{r['preset']}:{r['patch']}"
        if "step_s" not in r:
            print(f"{r['kind']:<10}{name:>9}{r['amp']:>6}  failed: {r['error']}")
            continue
        line = (f"{r['kind']:<10}{name:>9}{r['amp']:>6}{r['step_s']:>9.3f}{r['exams_per_s']:>9.2f}"
                f"{r['patch_tokens_per_s']:>13.0f}{r['encoder_tokens_per_s']:>11.0f}"
                f"{r['model_tflops_per_s'] * 1e3:>9.1f}{r['step_mem_bytes'] / 2**20:>9.0f}")  # fmt: skip
        if cuda:
            line += f"{r['mfu']:>7.1%}" if r.get("mfu") is not None else f"{'?':>7}"
        print(line)
    for error in sorted({r["bf16_error"] for r in rows if "bf16_error" in r}):
        print(f"MONAI under bf16 autocast failed ({error}); it ran in fp32")
    print(f"\nUMBIF bf16 / MONAI ({'fp32' if any('bf16_error' in r for r in rows) else 'bf16'}); > 1: UMBIF faster")
    print(f"{'config':<10}{'per token':>11}{'per exam':>10}{'per FLOP':>10}{'FLOPs/token':>13}{'fp32/fp32 token':>17}"
          f"{'fp32/fp32 exam':>16}")  # fmt: skip
    for c in comparisons:
        print(f"{c['config']:<10}{c['per_token']:>11.2f}{c['per_exam']:>10.2f}{c['per_model_flop']:>10.2f}"
              f"{c['flops_per_token']:>13.2f}{c.get('per_token_fp32', float('nan')):>17.2f}"
              f"{c.get('per_exam_fp32', float('nan')):>16.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one config, print its row as JSON
    parser.add_argument("--configs", nargs="+", help="PRESET:PATCH entries (default: cpu tiny:16 small:16 tiny:8; "
                        "cuda tiny:16 small:16 base:16 large:16 tiny:8 base:8)")  # fmt: skip
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), help="configs: these presets x --patch")
    parser.add_argument("--patch", type=int, nargs="+", help="patch edges for --presets (default 16)")
    parser.add_argument("--size", type=int, default=64, help="input edge in voxels (a cube)")
    parser.add_argument("--batch", type=int, default=4, help="exams per step")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--umbif-fp32", action=argparse.BooleanOptionalAction, default=True,
                        help="also time UMBIF in fp32 (a same-precision ratio to MONAI)")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--wait-load", type=float, default=0.0,
                        help="first wait (up to 15 min) for a 1-minute load average below this")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pretrain_step.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if importlib.util.find_spec("einops") is None:
        parser.error("MONAI's MaskedAutoEncoderViT needs einops: .venv/bin/pip install einops")
    if args.configs:
        configs = [(name.split(":")[0], int(name.split(":")[1])) for name in args.configs]
    elif args.presets or args.patch:
        configs = [(p, q) for p in args.presets or ["tiny", "small"] for q in args.patch or [16]]
    elif args.device == "cuda":
        configs = [("tiny", 16), ("small", 16), ("base", 16), ("large", 16), ("tiny", 8), ("base", 8)]
    else:
        configs = [("tiny", 16), ("small", 16), ("tiny", 8)]
    load_before = wait_quiet(args.wait_load, 15 * 60) if args.wait_load else list(os.getloadavg())

    common = {"size": args.size, "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
              "device": args.device, "threads": args.threads, "peak_tflops": args.peak_tflops}  # fmt: skip
    started = time.perf_counter()
    rows = measure(configs, common, args.umbif_fp32)
    comparisons = compare(rows, configs)
    print_tables(rows, comparisons, args)

    head = comparisons[0] if comparisons else {}
    ours, reference = find(rows, "umbif", configs[0], "bf16"), find(rows, "monai-1ch", configs[0])
    results = {
        "metric": "patch tokens per second of a full pretraining step (forward, backward, clip, AdamW, zero_grad), "
        f"{head.get('config')}, UMBIF in bf16 autocast",
        "ours": ours and ours["patch_tokens_per_s"],
        "reference": reference and reference["patch_tokens_per_s"],
        "reference_name": f"MONAI MaskedAutoEncoderViT in {head.get('monai_amp')}, in_channels=1, one image per "
        "sequence and view (the same tokens per step); width, depth, heads, MLP, decoder, patch, input and mask "
        "ratio 0.75 matched",
        "ratio": head.get("per_token"),
        "unit": "patch tokens/s",
        "target_ratio": 1.0,
        "comparisons": comparisons,
        "rows": rows,
        "tokens": {
            "patch_tokens": "every p^3 patch of every image of the step: UMBIF 2 views x 4 sequences x L per exam; "
            "MONAI 1ch the same (8 single-sequence images of L per exam); MONAI 4ch L per exam, of 4 p^3 voxels",
            "encoder_tokens": "tokens through the encoder blocks, CLS included: UMBIF 2 x (L + 1) per exam "
            "(visible = 0.25 x 4L); MONAI 1ch 8 x (int(L/4) + 1); MONAI 4ch int(L/4) + 1",
        },
        "flops_formula": "4 x patch embedding weights x every patch (no input gradient) + 6 x matmul weights x "
        "tokens through them (encoder blocks 4E^2 + 2EH on visible + CLS, decoder embedding, decoder blocks on "
        "all tokens + CLS, prediction, projection head) + 12 x depth x width x n^2 per attention sequence of n "
        "tokens; no recomputation. Equals torch's FlopCounterMode count plus the SDPA FLOPs it does not count on CPU",
        "mfu": "CUDA only: model FLOPs per step / median step time / the card's dense bf16 peak"
        if args.device == "cuda"
        else "not on CPU (no reliable peak); rows give model TFLOP/s",
        "memory": "peak CUDA allocation over the steps minus the allocation before them"
        if args.device == "cuda"
        else "peak RSS (ru_maxrss) of the config's own subprocess minus its peak before the first step",
        "monai_bf16_errors": sorted({r["bf16_error"] for r in rows if "bf16_error" in r}),
        "not_timed": "data loading and augmentation: both models get the same ready-made random views",
        "batch_exams": args.batch,
        "image_size": [args.size] * 3,
        "sequences": SEQ,
        "mask_ratio": 0.75,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
        "torch_threads": sorted({r["threads"] for r in rows if "threads" in r}),
        "loadavg_before": load_before,
        "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "machine": machine(),
        "versions": versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
