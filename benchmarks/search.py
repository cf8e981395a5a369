"""Search latency at scale: 1,000,000 x 512 L2-normalised vectors clustered like real embeddings.

The vectors come from a Gaussian mixture on the sphere: 2,000 component centres drawn uniformly on
the unit sphere, component weights from a Zipf-like law (a few large clusters, a long tail), each
point = centre + isotropic noise (sigma 0.035 per dimension: cosine ~0.78 to its centre, ~0.6 to
points of its cluster, ~0 across clusters), renormalised.
Queries are 1,000 fresh points of the same mixture (not in the index). The index is what
`vlm index` builds for that size (``vlm.index.ann.build``, auto: IVF-Flat, nprobe tuned at build
to recall@10 >= 0.95 on its held-out sample). The set-up reports build time, memory and recall@10
against exact search; each timed round (``benchmarks/harness.py``, interleaved) is the in-process
p50/p99 of one query (batch of 1, after encoding) over all queries on one thread and on all, and
exact batched search per query. clip-retrieval's back end quotes ~50 ms per query.

    python benchmarks/search.py [--n 1000000] [--dim 512] [--threads 2] [--repeats 1]
    python benchmarks/search.py --cli-index INDEX [--repeats 5]   # a real index: the whole
        # `vlm search` process, and in-process text queries (encode + search), interleaved
"""

from __future__ import annotations

import itertools
import resource
import sys
import time
from pathlib import Path

import numpy as np

import harness


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


def percentile_ms(times: list[float], q: float, digits: int = 3) -> float:
    return round(float(np.percentile(times, q)) * 1e3, digits)


def real_index(args) -> int:
    """Whole-process `vlm search` wall time, and in-process latency of text queries, on ``args.cli_index``."""
    import vlm.index

    idx = vlm.index.open(args.cli_index)
    idx.search(text="warm up", k=10)
    runs = itertools.count()
    path = str(Path(args.cli_index).resolve())  # the process runs in the repository root
    words = ["red", "blue", "green", "yellow", "orange", "purple"]
    shapes = ["star", "circle", "square", "triangle"]

    def process() -> dict:  # a fresh query each time, as a user types one
        cmd = [sys.executable, "-m", "vlm.cli.main", "search", path, "--text", f"a red star {next(runs)}",
               "--top-k", "10"]
        return harness.command(cmd)()

    def in_process() -> dict:
        enc, srch = [], []
        for n in range(48):
            t0 = time.perf_counter()
            v = idx.encode_text([f"a {words[n % 6]} {shapes[n % 4]}"])
            t1 = time.perf_counter()
            idx.search_vectors(v, 10)
            enc.append(t1 - t0)
            srch.append(time.perf_counter() - t1)
        return {"text_encode_p50_ms": percentile_ms(enc, 50, 2), "search_p50_ms": percentile_ms(srch, 50)}

    def measure() -> dict:
        return harness.interleave({"vlm search process": process, "in process, 48 text queries": in_process},
                                  args.repeats, warmup=args.warmup)

    return harness.run("search", args, measure, extra={"index": args.cli_index, "count": len(idx),
                                                        "model": idx.info["model"]})


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--cli-index", default=None, metavar="INDEX")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queries", type=int, default=1000)
    p.set_defaults(repeats=None, warmup=0)
    args = p.parse_args(argv)
    if args.cli_index:
        args.repeats = args.repeats or 5
        return real_index(args)
    args.repeats = args.repeats or 1
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
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, got = index.search(queries, 10)
    recall = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]))
    size = len(ann.to_bytes(index))

    def one_query(threads: int):
        def case() -> dict:
            faiss.omp_set_num_threads(threads)
            times = []
            for q in queries:
                s = time.perf_counter()
                index.search(q[None], 10)
                times.append(time.perf_counter() - s)
            return {"p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99)}
        return case

    def exact() -> dict:  # batched brute force, per query
        faiss.omp_set_num_threads(args.threads)
        t0 = time.perf_counter()
        faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
        return {"ms_per_query": (time.perf_counter() - t0) / len(queries) * 1e3}

    def measure() -> dict:
        cases = {f"{t}_thread": one_query(t) for t in dict.fromkeys((1, args.threads))}
        res = harness.interleave({**cases, "exact_batched": exact}, args.repeats, warmup=args.warmup)
        return {"latency_one_query": {k: {q: v["median"] for q, v in res[k].items()} for k in cases},
                "exact_batched_ms_per_query": round(res["exact_batched"]["ms_per_query"]["median"], 2),
                "timings": res}

    return harness.run("search", args, measure, versions=("numpy", "faiss-cpu"), extra={
        "n": args.n, "dim": args.dim, "mixture": "2000 Zipf(0.8)-weighted spherical Gaussians, sigma 0.035",
        "index": info, "build_seconds_total": round(build_s, 1), "data_seconds": round(gen_s, 1),
        "recall_at_10_fresh_queries": round(recall, 4), "index_bytes": size,
        "bytes_per_vector": round(size / args.n, 1), "peak_rss_gib": round(rss_gib(), 2)})


if __name__ == "__main__":
    raise SystemExit(main())
