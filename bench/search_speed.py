"""Nearest-neighbour search: latency, recall of the approximate modes, memory per image, LPIPS speed-up.

1. Hamming, k = 10, over random 3072-bit codes (16×16 tokens × 12 bits, the real 12-bit models): exact
   IndexBinaryFlat versus IndexBinaryIVF at several nprobe, recall@10 measured against the exact distances.
   Random codes are the worst case for any partitioning; `--real-codes N` measures the same modes, and binary HNSW
   (the index's `approximate` option), on the bundled tokenizer's codes of N procedural training images, queried
   with held-out images.
2. LPIPS k = 10 over 64×64 images: the index (one embedding per training image, an L2 search) versus the naive way
   (an lpips forward pass against every training image), same top-10 required.
3. `--lpips-sketch N`: the scalable LPIPS modes (count sketches of φ in flat, PQ and IVF-PQ indexes, shortlist
   re-ranked by exact LPIPS from the source images) built with `build_dataset_index` over N procedural images:
   recall@10 against the exact LPIPS index, latency per query and bytes per image.

    .venv/bin/python -m bench.search_speed --codes 1000000 --queries 100 --lpips-images 2000
    .venv/bin/python -m bench.search_speed --codes 0 --lpips-images 0 --real-codes 20000
    .venv/bin/python -m bench.search_speed --codes 0 --lpips-images 0 --lpips-sketch 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time

import faiss
import numpy as np
import torch

from data.datasets import ProceduralShapes
from indexes.lpips_embedding import LPIPSEmbedding


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def recall_at_k(exact_distances: np.ndarray, found_distances: np.ndarray) -> float:
    """Tie-aware recall: a found neighbour counts if its distance is ≤ the exact k-th distance (with 1e-4 relative
    slack: re-ranked LPIPS distances are recomputed from the images and agree with the index's to that tolerance)."""
    kth = exact_distances[:, -1:] * (1 + 1e-4)
    return float((found_distances <= kth).sum(1).clip(max=exact_distances.shape[1]).mean() / exact_distances.shape[1])


def real_codes(num_codes: int, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Packed token codes of procedural training images (database) and held-out images (queries)."""
    from maskbit import Tokenizer
    from maskbit.bits import pack_bits

    tokenizer = Tokenizer.from_pretrained("default")

    def encode(split: str, count: int) -> np.ndarray:
        dataset, rows = ProceduralShapes(split), []
        for start in range(0, count, 250):
            images = torch.stack(
                [
                    torch.from_numpy(np.asarray(dataset[i][0]).copy()).permute(2, 0, 1).float() / 255
                    for i in range(start, min(start + 250, count))
                ]
            )
            with torch.no_grad():
                rows.append(pack_bits(tokenizer.encode(images), tokenizer.num_bits).numpy())
        return np.concatenate(rows)

    return encode("train", num_codes), encode("test", num_queries)


def hamming(num_codes: int, num_queries: int, bits: int = 3072, real: bool = False) -> None:
    if real:
        codes, queries = real_codes(num_codes, num_queries)
        bits = codes.shape[1] * 8
    else:
        rng = np.random.default_rng(0)
        codes = rng.integers(0, 256, (num_codes, bits // 8), dtype=np.uint8)
        queries = rng.integers(0, 256, (num_queries, bits // 8), dtype=np.uint8)
    kind = "real" if real else "random"
    exact = faiss.IndexBinaryFlat(bits)
    _, build = timed(exact.add, codes)
    (exact_d, _), search = timed(exact.search, queries, 10)
    print(
        f"| Hamming exact (IndexBinaryFlat) | {num_codes:,} {kind} | {build:.1f} s | "
        f"{search * 1000 / num_queries:.1f} ms | "
        f"1.000 | {bits // 8} B |",
        flush=True,
    )
    nlist = 1024 if num_codes >= 64 * 1024 else max(16, num_codes // 64)
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
    _, train = timed(ivf.train, codes[: min(num_codes, 64 * nlist)])
    _, add = timed(ivf.add, codes)
    for nprobe in (1, 16, 64):
        ivf.nprobe = nprobe
        (d, _), search = timed(ivf.search, queries, 10)
        print(
            f"| Hamming IVF{nlist}, nprobe {nprobe} | {num_codes:,} {kind} | {train + add:.1f} s | "
            f"{search * 1000 / num_queries:.1f} ms | {recall_at_k(exact_d, d):.3f} | {bits // 8} B + 8 B id |",
            flush=True,
        )
    hnsw = faiss.IndexBinaryHNSW(bits, 32)
    _, add = timed(hnsw.add, codes)
    for ef in (16, 64, 256):
        hnsw.hnsw.efSearch = ef
        (d, _), search = timed(hnsw.search, queries, 10)
        print(
            f"| Hamming HNSW32, efSearch {ef} | {num_codes:,} {kind} | {add:.1f} s | "
            f"{search * 1000 / num_queries:.1f} ms | {recall_at_k(exact_d, d):.3f} | {bits // 8} B + 256 B links |",
            flush=True,
        )


def lpips_speedup(num_images: int, num_queries: int) -> None:
    embedding = LPIPSEmbedding("alex")  # the real trunk (shipped): recall depends on the weights
    dataset = ProceduralShapes("train")
    images = torch.stack(
        [torch.from_numpy(np.asarray(dataset[i][0]).copy()).permute(2, 0, 1).float() / 255 for i in range(num_images)]
    )
    queries = torch.stack(
        [
            torch.from_numpy(np.asarray(ProceduralShapes("test")[i][0]).copy()).permute(2, 0, 1).float() / 255
            for i in range(num_queries)
        ]
    )
    with torch.no_grad():
        features, build = timed(lambda: torch.cat([embedding(images[i : i + 256]) for i in range(0, num_images, 256)]))
        index = faiss.IndexFlatL2(features.shape[1])
        index.add(features.numpy())

        def indexed():
            return index.search(embedding(queries).numpy(), 10)

        def naive():
            rows = []
            for q in queries:
                distances = torch.cat(
                    [
                        embedding.lpips(q[None].expand(len(chunk), -1, -1, -1), chunk, normalize=True).flatten()
                        for chunk in images.split(256)
                    ]
                )
                rows.append(torch.sort(distances).values[:10])
            return torch.stack(rows)

        (found, _), t_index = timed(indexed)
        reference, t_naive = timed(naive)
    same = np.allclose(found, reference.numpy(), rtol=1e-4, atol=1e-6)
    print(
        f"\nLPIPS (alex) top-10 over {num_images} 64×64 images, {num_queries} queries: index {t_index:.2f} s "
        f"(+ {build:.1f} s to embed the training images once), naive {t_naive:.1f} s, speed-up "
        f"{t_naive / t_index:.0f}×, identical top-10 distances: {same}; "
        f"{features.shape[1] * 4 / 1024:.0f} KiB per image in the exact LPIPS index"
    )


SKETCH_MODES = (  # (sketch dimension, FAISS index factory, shortlists re-ranked exactly)
    (256, "Flat", (100,)),
    (1024, "Flat", (100,)),
    (1024, "PQ64", (100, 300)),
    (1024, "IVF128,PQ64", (100, 300)),
)


def lpips_sketch_recall(num_images: int, num_queries: int) -> None:
    """Exact LPIPS index versus the sketched modes, all built by `build_dataset_index` with the real AlexNet trunk
    (shipped with the package)."""
    from indexes.build import build_dataset_index
    from indexes.store import ImageIndex, IndexOptions
    from maskbit import Tokenizer

    tokenizer = Tokenizer.from_pretrained("default").requires_grad_(False)
    dataset = ProceduralShapes("test")
    queries = torch.stack(
        [torch.from_numpy(np.asarray(dataset[i][0]).copy()).permute(2, 0, 1).float() / 255 for i in range(num_queries)]
    )
    common = {"limit": num_images, "batch_size": 250}
    options = IndexOptions(metrics=["hamming", "lpips"])
    with tempfile.TemporaryDirectory() as root:
        exact, build = timed(build_dataset_index, f"{root}/exact", tokenizer, **common, options=options)
        found, search = timed(exact.search, queries, k=10, metrics=["lpips"])
        found = found["lpips"]
        dim = exact.flat["lpips"].d
        print(
            f"| LPIPS exact (IndexFlatL2 over φ, {dim:,} floats) | {num_images:,} | {build:.0f} s | "
            f"{search * 1000 / num_queries:.0f} ms | 1.000 | {dim * 4:,} B |",
            flush=True,
        )
        for sketch, factory, shortlists in SKETCH_MODES:
            path = f"{root}/{sketch}-{factory}"
            sketched = dataclasses.replace(options, lpips_sketch=sketch, lpips_factory=factory)
            index, build = timed(build_dataset_index, path, tokenizer, **common, options=sketched)
            size = faiss.serialize_index(ImageIndex.open(path, tokenizer).flat["lpips"]).size / num_images
            for shortlist in shortlists:
                result, search = timed(index.search, queries, k=10, metrics=["lpips"], lpips_shortlist=shortlist)
                print(
                    f"| LPIPS sketch {sketch}, {factory}, shortlist {shortlist} | {num_images:,} | {build:.0f} s | "
                    f"{search * 1000 / num_queries:.0f} ms | "
                    f"{recall_at_k(found.distances, result['lpips'].distances):.3f} | {size:,.0f} B |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--lpips-images", type=int, default=2000)
    parser.add_argument("--lpips-queries", type=int, default=10)
    parser.add_argument("--real-codes", type=int, default=0, help="also measure on N real token codes")
    parser.add_argument("--lpips-sketch", type=int, default=0, help="measure the sketched LPIPS modes on N images")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {faiss.omp_get_max_threads()} threads, "
        f"faiss {faiss.__version__}"
    )
    print("| mode | codes | build | latency / query | recall@10 | memory / image |")
    print("|---|---|---|---|---|---|")
    if args.codes:
        hamming(args.codes, args.queries)
    if args.real_codes:
        hamming(args.real_codes, args.queries, real=True)
    if args.lpips_sketch:
        lpips_sketch_recall(args.lpips_sketch, args.queries)
    if args.lpips_images:
        lpips_speedup(args.lpips_images, args.lpips_queries)


if __name__ == "__main__":
    main()
