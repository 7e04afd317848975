"""The bit-token claim as numbers: flip bits of every token, or of a few random tokens, decode, and measure.

MaskBit (Weber et al., TMLR 2024, Fig. 3 and App. G) says that bit tokens have structure: flip one bit of every token
of a lookup-free (LFQ) tokenizer and the image keeps its content, because bit k is the sign of latent channel k. A
vector-quantised (VQ) tokenizer's bit k is a bit of a codebook position, which should carry no such meaning. This
runs both on the same held-out images and reports, per bit i and overall, how far the decoded image moves from the
reconstruction (PSNR, L2, LPIPS when its weights are on this machine) and how often the judge (data/judge.py, a
classifier trained on real images only) still sees the original class. The claim is the hypothesis, not the answer.

    .venv/bin/python -m bench.bit_flips --out bench/results                 # the bundled LFQ tokenizer and its VQ twin
    .venv/bin/python -m bench.bit_flips --tokenizers markweber/maskbit_tokenizer_12bit markweber/vqgan_plus_12bit \
        --dataset /data/imagenet --split val --images 500 --out results/imagenet   # online, any pair (no judge)

Writes bit_flips.json, bit_flips.md (the tables), bit_flips.png (per-bit curves), bit_flips_examples.png (one image
with each bit flipped, per tokenizer) and atlas_<name>.png (every code decoded, Hamming-1 codes side by side),
atlases.png (the atlases next to each other).
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
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(source).rstrip("/").split("/")[-1])


def measure(tokenizer, indices, reconstructions, labels, mask, bit, classifier, embed, batch_size):
    """Flip `bit` where `mask` says (None: every token) in every grid, decode; mean distances to the reconstructions,
    and `judge_true_class`: the share of flipped images the judge labels with the image's true class."""
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
        row["judge_true_class"] = float((judge.predict(classifier, images) == labels).float().mean())
    return row, images[0]


def run_tokenizer(source, images, labels, classifier, embed, batch_size, seed):
    tokenizer = Tokenizer.from_pretrained(source).requires_grad_(False).eval()
    started = time.time()
    indices = torch.cat([tokenizer.encode(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    reconstructions = analysis.decode_images(tokenizer, indices, batch_size).cpu()
    result = {
        "source": str(source),
        "quantizer": tokenizer.quantizer_kind,
        "num_bits": tokenizer.num_bits,
        "reconstruction_psnr_db": float(analysis.distances(reconstructions, images).psnr.mean()),
        "code_usage": analysis.token_statistics(indices, tokenizer.num_bits).code_usage,
        "flips": {},
    }
    if classifier is not None:
        result["judge_on_originals"] = float((judge.predict(classifier, images) == labels).float().mean())
        result["judge_on_reconstructions"] = float(
            (judge.predict(classifier, reconstructions) == labels).float().mean()
        )
    examples = [reconstructions[0]]
    generator = torch.Generator().manual_seed(seed)
    for where in ["all", *TOKEN_COUNTS]:
        rows = []
        for bit in range(tokenizer.num_bits):
            mask = None if where == "all" else analysis.random_token_mask(tuple(indices.shape), where, generator)
            row, example = measure(
                tokenizer, indices, reconstructions, labels, mask, bit, classifier, embed, batch_size
            )
            rows.append({"bit": bit, **row})
            if where == "all":
                examples.append(example)
        overall = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "bit" and rows[0][k] is not None}
        result["flips"][str(where)] = {"per_bit": rows, "overall": overall}
        print(f"{short_name(source)}: flips at {where} tokens: {overall}", flush=True)
    result["seconds"] = time.time() - started
    return result, tokenizer, torch.stack(examples)


def write_tables(results: list[dict], images: int, out: Path) -> None:
    names = [short_name(r["source"]) for r in results]
    judged = all("judge_on_originals" in r for r in results)
    lines = [f"Over {images} held-out images. PSNR and L2 are to each tokenizer's own reconstruction.", ""]
    lines += ["| tokenizer | quantiser | bits | reconstruction PSNR | judge on reconstructions | code usage |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, r in zip(names, results):
        judge_text = f"{r['judge_on_reconstructions']:.1%}" if judged else "—"
        lines.append(
            f"| {name} | {r['quantizer']} | {r['num_bits']} | {r['reconstruction_psnr_db']:.2f} dB | {judge_text} | "
            f"{r['code_usage']:.1%} |"
        )
    lines += ["", "Mean over bits i of flipping bit i:", ""]
    head = "| flipped at | " + " | ".join(f"{n}: PSNR / L2" + (" / judge" if judged else "") for n in names) + " |"
    lines += [head, "|---|" + "---|" * len(names)]
    for where in ["all", *map(str, TOKEN_COUNTS)]:
        cells = []
        for r in results:
            o = r["flips"][where]["overall"]
            cells.append(
                f"{o['psnr_db']:.1f} dB / {o['l2']:.2f}" + (f" / {o['judge_true_class']:.1%}" if judged else "")
            )
        label = "every token" if where == "all" else f"{where} random token{'s' if where != '1' else ''}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per bit, flipped at every token (PSNR dB" + (", judge: true class" if judged else "") + "):", ""]
    lines += ["| bit | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for bit in range(max(r["num_bits"] for r in results)):
        cells = []
        for r in results:
            rows = r["flips"]["all"]["per_bit"]
            if bit < len(rows):
                cells.append(
                    f"{rows[bit]['psnr_db']:.1f}" + (f", {rows[bit]['judge_true_class']:.0%}" if judged else "")
                )
            else:
                cells.append("")
        lines.append(f"| {bit} | " + " | ".join(cells) + " |")
    (out / "bit_flips.md").write_text("\n".join(lines) + "\n")


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = all("judge_on_originals" in r for r in results)
    panels = ["psnr_db", "judge_true_class"] if judged else ["psnr_db", "l2"]
    titles = {"psnr_db": "PSNR to the reconstruction (dB)", "judge_true_class": "judge sees the true class", "l2": "L2"}
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for r in results:
            for where, style in (("all", "-"), ("16", "--"), ("1", ":")):
                rows = r["flips"][where]["per_bit"]
                label = f"{short_name(r['source'])} ({r['quantizer']}), {'every' if where == 'all' else where} tok."
                ax.plot([row["bit"] for row in rows], [row[key] for row in rows], style, marker="o", ms=3, label=label)
        ax.set_xlabel("bit i flipped")
        ax.set_title(titles[key])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "bit_flips.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", nargs="+", default=["default", "default-vq"], help="from_pretrained sources")
    parser.add_argument("--dataset", default="procedural", help="the judge only knows the procedural shapes")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--judge", type=Path, help="a judge file (default: the bundled one); 64 px procedural only")
    parser.add_argument("--no-judge", action="store_true", help="skip the judge (any dataset)")
    parser.add_argument("--lpips", choices=["auto", "off"], default="auto", help="auto: when the weights are present")
    parser.add_argument("--atlas", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be ≥ 1")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sizes = {Tokenizer.from_pretrained(source).config.image_size for source in args.tokenizers}
    if len(sizes) > 1:
        parser.error(f"the tokenizers work at different image sizes ({sorted(sizes)}); compare tokenizers of one size")
    (resolution,) = sizes
    classifier = None
    if not args.no_judge and args.dataset == "procedural" and resolution == 64:
        classifier = judge.load(args.judge or judge.BUNDLED)
        if classifier is None:
            parser.error(f"no judge at {args.judge or judge.BUNDLED}: train one with `python -m data.judge`")
    embed, lpips_note = None, "off"
    if args.lpips == "auto":
        from indexes.lpips_embedding import LPIPSEmbedding, MissingBackboneError

        try:
            embed, lpips_note = LPIPSEmbedding("alex"), "AlexNet LPIPS"
        except MissingBackboneError as error:
            lpips_note = f"absent: {error}"
    images, labels = split_images(args.dataset, args.split, args.images, resolution, seed=args.seed)
    results, examples, atlases = [], [], []
    for source in args.tokenizers:
        result, tokenizer, example = run_tokenizer(
            source, images, labels, classifier, embed, args.batch_size, args.seed
        )
        results.append(result)
        examples.append(example)
        if args.atlas:
            atlas = analysis.code_atlas(tokenizer)
            save_image(atlas.image, args.out / f"atlas_{short_name(source)}.png")
            atlases.append(atlas.image)
    if len(atlases) > 1 and len({a.shape for a in atlases}) == 1:  # side by side, 16 px of white between
        gap = atlases[0].new_ones(3, atlases[0].shape[1], 16)
        save_image(torch.cat([part for a in atlases for part in (a, gap)][:-1], dim=2), args.out / "atlases.png")
    columns = max(len(e) for e in examples)
    padded = [torch.cat([e, e.new_ones(columns - len(e), *e.shape[1:])]) for e in examples]
    save_image(image_grid(torch.cat(padded), columns=columns), args.out / "bit_flips_examples.png")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "images": len(images),
        "dataset": f"{args.dataset} ({args.split})",
        "lpips": lpips_note,
        "judge": None if classifier is None else str(args.judge or judge.BUNDLED),
        "tokenizers": results,
        "seconds": time.time() - started,
    }
    (args.out / "bit_flips.json").write_text(json.dumps(report, indent=2) + "\n")
    write_tables(results, len(images), args.out)
    plot(results, args.out)
    print(f"wrote bit_flips.json, bit_flips.md, bit_flips.png, bit_flips_examples.png to {args.out}")


if __name__ == "__main__":
    main()
