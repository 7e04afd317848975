"""The bit-token claim as numbers: flip bits of every token, or of a few random tokens, decode, and measure.

MaskBit (Weber et al., TMLR 2024, Fig. 3 and App. G) says that bit tokens have structure: flip one bit of every token
of a lookup-free (LFQ) tokenizer and the image keeps its content, because bit k is the sign of latent channel k. A
vector-quantised (VQ) tokenizer's bit k is a bit of a codebook position, which should carry no such meaning. This
runs both on the same held-out images and reports, per bit i and overall, how far the decoded image moves from the
reconstruction (PSNR, L2, LPIPS when its weights are on this machine) and how often the judge (data/judge.py, a
classifier trained on real images only) still sees the original class, sees another class, or sees none of its
classes (its "none of these" rule: coloured noise is no shape). The claim is the hypothesis, not the answer.

At a few random tokens it also measures where the change goes: the *locality* of a flip is the share of the pixel
change (squared L2, summed over channels) that falls inside the flipped tokens' own pixel blocks (for one token of a
16×16 grid on 64 px images: its 4×4 pixels, 1/256 of the image), and `locality_3x3` (`locality_5x5`) the share
inside the 3×3 (5×5) tokens around them. A decoder that only looks at nearby tokens keeps most of the change there;
one that normalises with statistics of the whole grid (every GroupNorm does a little, Open-MAGVIT2's adaptive
GroupNorm reads the statistics of the tokens themselves) or attends over it spreads some of it over the image.
Decoding is in float32 unless asked otherwise: bf16 rounding changes every pixel a little and hides where a flip lands.

    .venv/bin/python -m bench.bit_flips --out bench/results                 # the bundled LFQ tokenizer and its VQ twin
    .venv/bin/python -m bench.bit_flips --tokenizers default default-vq runs/twin-omv/model runs/twin-ibq/model \
        --labels maskbit-lfq vqgan-plus-vq open-magvit2-lfq ibq-vq --out bench/results   # any number, one table
    .venv/bin/python -m bench.bit_flips --tokenizers imagenet_256_L.ckpt imagenet256_16384.ckpt \
        --configs open_magvit2_256_L ibq_16384 --dataset /data/imagenet --split val --images 100 --no-atlas \
        --out results/family                   # published checkpoints (files or hub ids; no judge off the shapes)

Writes bit_flips.json, bit_flips.md (the tables), bit_flips.png (per-bit curves), bit_flips_examples.png (one image
with each bit flipped, per tokenizer), bit_flips_locality.png (per tokenizer: one image, bit 0 of its centre token
flipped, the change linear and on a log scale) and atlas_<label>.png (the code atlas), atlases.png (side by side).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from data import judge, split_images
from maskbit import Tokenizer, analysis, bits
from maskbit.images import image_grid, save_image

TOKEN_COUNTS = (1, 4, 16)  # flips at this many random tokens per image, besides every token


def short_name(source: str) -> str:
    """A file-name-safe label: the last part of the source, or of its folder for a run's `model` directory."""
    parts = [p for p in str(source).rstrip("/").split("/") if p]
    name = parts[-2] if len(parts) > 1 and parts[-1] == "model" else parts[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def family(config) -> str:
    """The tokenizer family in words, from its config: autoencoder and quantiser."""
    if config.model_class == "magvit2":
        return "Open-MAGVIT2 LFQ" if config.token_size <= 24 else "BitDance LFQ"
    if config.model_class == "taming":
        return "IBQ VQ" if config.code_assignment == "dot_product" else "Taming VQ"
    if config.model_class == "maskgit":
        return "MaskGIT VQ"
    return "MaskBit LFQ" if config.quantizer == "lfq" else "VQGAN+ VQ"


def flip_locality(changed: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, spread: int = 0) -> np.ndarray:
    """Per image, the share of the change Σ_c (changed − reference)² that falls inside the pixel blocks of the tokens
    set in `mask` (B, h, w), widened by `spread` tokens on every side (1: the 3×3 neighbourhood); NaN where nothing
    changed. Images (B, 3, H, W) with H, W multiples of h, w."""
    diff = (changed.double() - reference.double()).pow(2).sum(1)  # (B, H, W)
    blocks = mask.double()[:, None]
    if spread:
        blocks = torch.nn.functional.max_pool2d(blocks, 2 * spread + 1, stride=1, padding=spread)
    fy, fx = diff.shape[-2] // mask.shape[-2], diff.shape[-1] // mask.shape[-1]
    pixels = blocks[:, 0].repeat_interleave(fy, -2).repeat_interleave(fx, -1)
    total = diff.flatten(1).sum(1)
    inside = (diff * pixels).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.nan).numpy()


def measure(tokenizer, indices, reconstructions, labels, mask, bit, classifier, embed, batch_size):
    """Flip `bit` where `mask` says (None: every token) in every grid, decode; mean distances to the reconstructions,
    `judge_true_class`: the share of flipped images the judge labels with the image's true class, and `judge_none`:
    the share it takes for none of its classes (the rest it takes for another class)."""
    flipped = bits.flip_bits(indices, bit, tokenizer.num_bits, mask)
    images = analysis.decode_images(tokenizer, flipped, batch_size).cpu()
    found = analysis.distances(images, reconstructions, embed)
    row = {
        "psnr_db": float(np.mean(np.minimum(found.psnr, 100.0))),  # identical images count as 100 dB, not inf
        "l2": float(found.l2.mean()),
        "lpips": None if found.lpips is None else float(found.lpips.mean()),
        "unchanged": float(np.mean(np.isinf(found.psnr))),
    }
    if classifier is not None:
        found = judge.verdict(classifier, images)
        row["judge_true_class"] = float((found == labels).float().mean())
        row["judge_none"] = float((found == judge.NONE).float().mean())
    if mask is not None:
        for key, spread in (("locality", 0), ("locality_3x3", 1), ("locality_5x5", 2)):
            shares = flip_locality(images, reconstructions, mask, spread)
            row[key] = float(np.nanmean(shares)) if np.isfinite(shares).any() else float("nan")
        row["area_share"] = float(mask.double().mean())  # the locality of a change spread evenly over the image
    return row, images[0]


def run_tokenizer(source, config, label, images, labels, classifier, embed, batch_size, seed, token_counts, precision):
    tokenizer = Tokenizer.from_pretrained(source, config).requires_grad_(False).eval()
    tokenizer.precision = precision
    started = time.time()
    indices = torch.cat([tokenizer.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    reconstructions = analysis.decode_images(tokenizer, indices, batch_size).cpu()
    result = {
        "source": str(source),
        "label": label,
        "family": family(tokenizer.config),
        "parameters": sum(p.numel() for p in tokenizer.parameters()),
        "quantizer": tokenizer.quantizer_kind,
        "num_bits": tokenizer.num_bits,
        "reconstruction_psnr_db": float(analysis.distances(reconstructions, images).psnr.mean()),
        "code_usage": analysis.token_statistics(indices, tokenizer.num_bits).code_usage,
        "flips": {},
    }
    if classifier is not None:
        result["judge_on_originals"] = float((judge.verdict(classifier, images) == labels).float().mean())
        result["judge_on_reconstructions"] = float(
            (judge.verdict(classifier, reconstructions) == labels).float().mean()
        )
    examples = [reconstructions[0]]
    generator = torch.Generator().manual_seed(seed)
    for where in ["all", *token_counts]:
        rows = []
        for bit in range(tokenizer.num_bits):
            mask = None if where == "all" else analysis.random_token_mask(tuple(indices.shape), where, generator)
            row, example = measure(
                tokenizer, indices, reconstructions, labels, mask, bit, classifier, embed, batch_size
            )
            rows.append({"bit": bit, **row})
            if where == "all":
                examples.append(example)
        overall = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "bit" and rows[0][k] is not None}
        result["flips"][str(where)] = {"per_bit": rows, "overall": overall}
        print(f"{label}: flips at {where} tokens: {overall}", flush=True)
    result["seconds"] = time.time() - started
    return result, tokenizer, torch.stack(examples), locality_example(tokenizer, indices[0], reconstructions[0])


def locality_example(tokenizer, grid: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Bit 0 of the centre token flipped in one image: (4, 3, H, W) = the reconstruction, the flipped decode, |Δ|
    scaled to its maximum, and log10 |Δ| over six decades below the maximum (black: < 10⁻⁶ of it); the flipped
    token's block is outlined in red in the last two."""
    h, w = grid.shape
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, h // 2, w // 2] = True
    flipped = analysis.decode_images(tokenizer, bits.flip_bits(grid[None], 0, tokenizer.num_bits, mask)).cpu()[0]
    change = (flipped - reconstruction).abs().amax(0)  # (H, W)
    peak = change.max().clamp(min=1e-12)
    linear = (change / peak).expand(3, -1, -1).clone()
    logarithmic = ((change / peak).clamp(min=1e-6).log10() / 6 + 1).expand(3, -1, -1).clone()
    fy, fx = change.shape[0] // h, change.shape[1] // w
    y0, x0 = (h // 2) * fy, (w // 2) * fx
    for panel in (linear, logarithmic):
        for y, x in [(y0 - 1, slice(x0 - 1, x0 + fx + 1)), (y0 + fy, slice(x0 - 1, x0 + fx + 1))]:
            if 0 <= y < change.shape[0]:
                panel[:, y, x] = torch.tensor([1.0, 0.0, 0.0])[:, None]
        for x, y in [(x0 - 1, slice(y0 - 1, y0 + fy + 1)), (x0 + fx, slice(y0 - 1, y0 + fy + 1))]:
            if 0 <= x < change.shape[1]:
                panel[:, y, x] = torch.tensor([1.0, 0.0, 0.0])[:, None]
    return torch.stack([reconstruction, flipped, linear, logarithmic])


def judge_cells(row: dict) -> str:
    """ " / true class / none": the shares of flipped images the judge takes for their class and for none of its own."""
    return f" / {row['judge_true_class']:.1%} / {row['judge_none']:.1%}"


def write_tables(results: list[dict], images: int, out: Path) -> None:
    names = [r["label"] for r in results]
    judged = all("judge_on_originals" in r for r in results)
    counts = [w for w in results[0]["flips"] if w != "all"]
    lines = [f"Over {images} held-out images. PSNR and L2 are to each tokenizer's own reconstruction.", ""]
    lines += [
        "| tokenizer | family | bits | parameters | reconstruction PSNR | judge on reconstructions | code usage |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for name, r in zip(names, results):
        judge_text = f"{r['judge_on_reconstructions']:.1%}" if judged else "—"
        lines.append(
            f"| {name} | {r['family']} | {r['num_bits']} | {r['parameters'] / 1e6:.2f} M | "
            f"{r['reconstruction_psnr_db']:.2f} dB | {judge_text} | {r['code_usage']:.1%} |"
        )
    if "1" in counts:
        lines += ["", "One bit flipped at every token and at one random token per image (mean over the bits):", ""]
        judge_head = " / judge: true class / none" if judged else ""
        lines += [
            f"| tokenizer | family | every token: PSNR{judge_head} | 1 token: PSNR{judge_head} | "
            "1 token: locality (own block) | in 3×3 tokens | in 5×5 tokens | own block's share of the image |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in zip(names, results):
            every, one = r["flips"]["all"]["overall"], r["flips"]["1"]["overall"]
            cells = [
                f"{every['psnr_db']:.1f} dB" + (judge_cells(every) if judged else ""),
                f"{one['psnr_db']:.1f} dB" + (judge_cells(one) if judged else ""),
                f"{one['locality']:.1%}",
                f"{one['locality_3x3']:.1%}",
                f"{one['locality_5x5']:.1%}",
                f"{one['area_share']:.2%}",
            ]
            lines.append(f"| {name} | {r['family']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean over bits i of flipping bit i (locality: share of the change in the flipped tokens' blocks):",
        "",
    ]
    head = " | ".join(f"{n}: PSNR / L2" + (" / judge: true class / none" if judged else "") for n in names)
    head = f"| flipped at | {head} |"
    lines += [head, "|---|" + "---|" * len(names)]
    for where in ["all", *counts]:
        cells = []
        for r in results:
            o = r["flips"][where]["overall"]
            text = f"{o['psnr_db']:.1f} dB / {o['l2']:.2f}" + (judge_cells(o) if judged else "")
            cells.append(text + (f" / locality {o['locality']:.1%}" if "locality" in o else ""))
        label = "every token" if where == "all" else f"{where} random token{'s' if where != '1' else ''}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per bit, flipped at every token (PSNR dB" + (", judge: true class / none" if judged else "") + "):"]
    lines += [""]
    lines += ["| bit | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for bit in range(max(r["num_bits"] for r in results)):
        cells = []
        for r in results:
            rows = r["flips"]["all"]["per_bit"]
            if bit < len(rows):
                cells.append(
                    f"{rows[bit]['psnr_db']:.1f}"
                    + (f", {rows[bit]['judge_true_class']:.0%} / {rows[bit]['judge_none']:.0%}" if judged else "")
                )
            else:
                cells.append("")
        lines.append(f"| {bit} | " + " | ".join(cells) + " |")
    (out / "bit_flips.md").write_text("\n".join(lines) + "\n")


def plot(results: list[dict], out: Path) -> None:
    """Per bit: PSNR and the judge's verdicts (true class; none of these) at every token and at 1 (and 16) tokens;
    locality at 1 token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = all("judge_on_originals" in r for r in results)
    counts = [w for w in results[0]["flips"] if w != "all"]
    panels = ["psnr_db", "judge_true_class", "judge_none"] if judged else ["psnr_db", "l2"]
    if counts:
        panels.append("locality")
    titles = {
        "psnr_db": "PSNR to the reconstruction (dB)",
        "judge_true_class": "judge sees the true class",
        "judge_none": "judge sees none of its classes (noise)",
        "l2": "L2",
        "locality": f"locality: share of the change in the flipped token's block ({counts[0] if counts else ''} tok.)",
    }
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], panels):
        for i, r in enumerate(results):
            colour = colours[i % len(colours)]
            settings = [counts[0]] if key == "locality" else [w for w in ("all", "16", "1") if w in r["flips"]]
            for where in settings:
                style = {"all": "-", "16": "--"}.get(where, ":")
                rows = r["flips"][where]["per_bit"]
                label = f"{r['label']} ({r['family']}), {'every' if where == 'all' else where} tok."
                ax.plot(
                    [row["bit"] for row in rows],
                    [row[key] for row in rows],
                    style,
                    color=colour,
                    marker="o",
                    ms=3,
                    label=label,
                )
        if key in ("judge_true_class", "judge_none", "locality"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("bit i flipped")
        ax.set_title(titles[key], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out / "bit_flips.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", nargs="+", default=["default", "default-vq"], help="from_pretrained sources")
    parser.add_argument(
        "--configs",
        nargs="+",
        metavar="PRESET_OR_YAML",
        help="for official files: one preset name or YAML for all tokenizers, or one per tokenizer ('-': none)",
    )
    parser.add_argument("--labels", nargs="+", help="one short name per tokenizer (default: from the source)")
    parser.add_argument(
        "--token-counts", nargs="+", type=int, default=list(TOKEN_COUNTS), help="random tokens flipped per image"
    )
    parser.add_argument("--dataset", default="procedural", help="the judge only knows the procedural shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--judge", type=Path, help="a judge file (default: the bundled one); 64 px procedural only")
    parser.add_argument("--no-judge", action="store_true", help="skip the judge (any dataset)")
    parser.add_argument("--lpips", choices=["auto", "off"], default="auto", help="auto: when the weights are present")
    parser.add_argument("--atlas", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="decoding precision; fp32 by default: bf16 rounding changes every pixel a little and would hide where a "
        "one-token flip lands",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be ≥ 1")
    n = len(args.tokenizers)
    configs = args.configs or ["-"]
    if len(configs) not in (1, n):
        parser.error(f"--configs takes one value for all tokenizers or one per tokenizer ({n}), got {len(configs)}")
    configs = [None if c == "-" else c for c in (configs * n if len(configs) == 1 else configs)]
    labels = args.labels or [short_name(source) for source in args.tokenizers]
    if len(labels) != n:
        parser.error(f"--labels takes one name per tokenizer ({n}), got {len(labels)}")
    if not args.labels:  # the same source twice (or two runs' `model` folders of one name): number the repeats
        labels = [
            label if labels[:i].count(label) == 0 else f"{label}-{labels[:i].count(label) + 1}"
            for i, label in enumerate(labels)
        ]
    if len(set(labels)) != n:
        parser.error(f"--labels must be distinct, got {labels}")
    if any(not re.fullmatch(r"[A-Za-z0-9_.+-]+", label) for label in labels):
        parser.error(f"--labels are used in file names: letters, digits and _ . + - only, got {labels}")
    if (
        not args.token_counts
        or any(c < 1 for c in args.token_counts)
        or len(set(args.token_counts)) != len(args.token_counts)
    ):
        parser.error(f"--token-counts must be distinct whole numbers ≥ 1, got {args.token_counts}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sizes = {Tokenizer.from_pretrained(s, c).config.image_size for s, c in zip(args.tokenizers, configs)}
    if len(sizes) > 1:
        parser.error(f"the tokenizers work at different image sizes ({sorted(sizes)}); compare tokenizers of one size")
    (resolution,) = sizes
    classifier = None
    if not args.no_judge and args.dataset == "procedural" and resolution == 64:
        classifier = judge.load(args.judge or judge.BUNDLED)
        if classifier is None:
            parser.error(f"no judge at {args.judge or judge.BUNDLED}: train one with `python -m data.judge`")
        if classifier.none_rule is None:
            parser.error(
                f"the judge at {args.judge or judge.BUNDLED} has no 'none of these' rule fitted for its weights: "
                f"run `python -m data.judge --fit-none --out {args.judge or judge.BUNDLED}`"
            )
    embed, lpips_note = None, "off"
    if args.lpips == "auto":
        from indexes.lpips_embedding import LPIPSEmbedding, MissingBackboneError

        try:
            embed, lpips_note = LPIPSEmbedding("alex"), "AlexNet LPIPS"
        except MissingBackboneError as error:
            lpips_note = f"absent: {error}"
    images, labels_true = split_images(args.dataset, args.split, args.images, resolution, seed=args.seed)
    counts = sorted(args.token_counts)
    results, examples, atlases, localities = [], [], [], []
    for source, config, label in zip(args.tokenizers, configs, labels):
        result, tokenizer, example, locality = run_tokenizer(
            source,
            config,
            label,
            images,
            labels_true,
            classifier,
            embed,
            args.batch_size,
            args.seed,
            counts,
            args.precision,
        )
        results.append(result)
        examples.append(example)
        localities.append(locality)
        if args.atlas:
            atlas = analysis.code_atlas(tokenizer)
            save_image(atlas.image, args.out / f"atlas_{label}.png")
            atlases.append(atlas.image)
    if len(atlases) > 1 and len({a.shape for a in atlases}) == 1:  # side by side, 16 px of white between
        gap = atlases[0].new_ones(3, atlases[0].shape[1], 16)
        save_image(torch.cat([part for a in atlases for part in (a, gap)][:-1], dim=2), args.out / "atlases.png")
    columns = max(len(e) for e in examples)
    padded = [torch.cat([e, e.new_ones(columns - len(e), *e.shape[1:])]) for e in examples]
    save_image(image_grid(torch.cat(padded), columns=columns), args.out / "bit_flips_examples.png")
    save_image(image_grid(torch.cat(localities), columns=4), args.out / "bit_flips_locality.png")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "images": len(images),
        "precision": args.precision,
        "dataset": f"{args.dataset} ({args.split})",
        "lpips": lpips_note,
        "judge": None if classifier is None else str(args.judge or judge.BUNDLED),
        "judge_none_rule": None if classifier is None else classifier.none_rule.rates,
        "tokenizers": results,
        "seconds": time.time() - started,
    }
    (args.out / "bit_flips.json").write_text(json.dumps(report, indent=2) + "\n")
    write_tables(results, len(images), args.out)
    plot(results, args.out)
    print(f"wrote bit_flips.json, .md, .png, bit_flips_examples.png, bit_flips_locality.png to {args.out}")


if __name__ == "__main__":
    main()
