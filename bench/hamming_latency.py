"""Exact Hamming k-NN latency over 1.28M random 3072-bit codes (16×16 tokens × 12 bits), FAISS IndexBinaryFlat on
the CPU, k = 10: per query within a batch of 100 (as `gpu_check`'s search section measures it) and for single
queries, with FAISS's settings (heap, query batches of 32) and its counting search (`use_heap = False`). Every
setting must return the default's distances.

    .venv/bin/python -m bench.hamming_latency
"""

from __future__ import annotations

import time

import faiss
import numpy as np


def main() -> None:
    rng = np.random.default_rng(0)
    n, q = 1_280_000, 100
    codes = rng.integers(0, 256, (n, 384), dtype=np.uint8)
    picked = codes[rng.choice(n, q // 2, replace=False)]
    queries = np.concatenate([picked, rng.integers(0, 256, (q - q // 2, 384), dtype=np.uint8)])
    index = faiss.IndexBinaryFlat(3072)
    index.add(codes)
    reference, _ = index.search(queries, 10)
    print(f"faiss {faiss.__version__} ({faiss.get_compile_options()}), {faiss.omp_get_max_threads()} threads")

    def run(label: str, **settings) -> None:
        for key, value in settings.items():
            setattr(index, key, value)
        index.search(queries[:8], 10)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            distances, _ = index.search(queries, 10)
            times.append(time.perf_counter() - start)
        assert np.array_equal(distances, reference)
        start = time.perf_counter()
        for i in range(10):
            index.search(queries[i : i + 1], 10)
        single = (time.perf_counter() - start) / 10
        print(f"| {label} | {1000 * min(times) / q:.1f} ms | {1000 * single:.1f} ms |", flush=True)

    print("| setting | per query, batch of 100 | single query |\n|---|---|---|")
    for _ in range(2):  # interleaved
        run("heap, query batches of 32 (default)", use_heap=True, query_batch_size=32)
        run("heap, query batches of 100", use_heap=True, query_batch_size=100)
        run("counting (use_heap = False)", use_heap=False, query_batch_size=32)


if __name__ == "__main__":
    main()
