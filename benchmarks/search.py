"""Search latency at scale: 1,000,000 x 512 L2-normalised vectors clustered like real embeddings.

The vectors come from a Gaussian mixture on the sphere: 2,000 component centres drawn uniformly on
the unit sphere, component weights from a Zipf-like law (a few large clusters, a long tail), each
point = centre + isotropic noise (sigma 0.035 per dimension: cosine ~0.78 to its centre, ~0.6 to
points of its cluster, ~0 across clusters), renormalised.
Queries are 1,000 fresh points of the same mixture (not in the index). The index is what
`vlm index` builds for that size (``vlm.index.ann.build``, auto: IVF-Flat, nprobe tuned at build
to recall@10 >= 0.95 on its held-out sample). Reports build time, memory, recall@10 against exact
search and the in-process p50/p99 of one query (batch of 1, after encoding) on one thread and all.
clip-retrieval's back end quotes ~50 ms per query.

    python benchmarks/search.py [--n 1000000] [--dim 512] [--threads 2]
    python benchmarks/search.py --cli-index INDEX   # a real index: whole `vlm search` process,
                                                           # in-process text query (encode + search)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def mixture(n: int, dim: int, rng, components: int = 2000, sigma: float = 0.035, centres=None):
    if centres is None:
        centres = rng.standard_normal((components, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    w = 1.0 / np.arange(1, len(centres) + 1) ** 0.8
    labels = rng.choice(len(centres), size=n, p=w / w.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):  # chunks: bounded temporaries
        e = min(n, s + 100_000)
        x = centres[labels[s:e]] + sigma * rng.standard_normal((e - s, dim), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def real_index(path: str, repeats: int = 5) -> dict:
    """Whole-process `vlm search` wall time, and in-process latency of text queries."""
    import statistics
    import subprocess

    import vlm.index

    walls = []
    for i in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "vlm.cli.main", "search", path, "--text", f"a red star {i}",
                            "--top-k", "10"], capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
    idx = vlm.index.open(path)
    idx.search(text="warm up", k=10)
    words = ["red", "blue", "green", "yellow", "orange", "purple"]
    shapes = ["star", "circle", "square", "triangle"]
    enc, srch = [], []
    for n in range(48):
        q = f"a {words[n % 6]} {shapes[n % 4]}"
        t0 = time.perf_counter()
        v = idx.encode_text([q])
        t1 = time.perf_counter()
        idx.search_vectors(v, 10)
        enc.append(t1 - t0)
        srch.append(time.perf_counter() - t1)
    return {"index": path, "count": len(idx), "model": idx.info["model"],
            "vlm_search_process_median_s": round(statistics.median(walls), 3),
            "text_encode_p50_ms": round(float(np.percentile(enc, 50)) * 1e3, 2),
            "search_p50_ms": round(float(np.percentile(srch, 50)) * 1e3, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli-index", default=None, metavar="INDEX")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.cli_index:
        print(json.dumps(real_index(args.cli_index), indent=2))
        return 0
    import faiss

    from vlm.index import ann

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    vectors, centres = mixture(args.n, args.dim, rng)
    queries, _ = mixture(args.queries, args.dim, rng, centres=centres)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, info = ann.build(vectors)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t0
    _, got = index.search(queries, 10)
    recall = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]))
    lat = {}
    for threads in (1, args.threads):
        faiss.omp_set_num_threads(threads)
        times = []
        for q in queries:
            s = time.perf_counter()
            index.search(q[None], 10)
            times.append(time.perf_counter() - s)
        lat[f"{threads}_thread"] = {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
                                    "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3)}
    exact_ms = exact_s / len(queries) * 1e3  # batched brute force, per query
    size = len(ann.to_bytes(index))
    print(json.dumps({
        "n": args.n, "dim": args.dim, "mixture": "2000 Zipf(0.8)-weighted spherical Gaussians, sigma 0.035",
        "index": info, "build_seconds_total": round(build_s, 1), "data_seconds": round(gen_s, 1),
        "recall_at_10_fresh_queries": round(recall, 4), "latency_one_query": lat,
        "exact_batched_ms_per_query": round(exact_ms, 2), "index_bytes": size,
        "bytes_per_vector": round(size / args.n, 1), "peak_rss_gib": round(rss_gib(), 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
