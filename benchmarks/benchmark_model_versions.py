"""Side-by-side forward time of two checkpoints (e.g. v1 and v2) with cached task embeddings, interleaved in one run.

    python benchmarks/benchmark_model_versions.py OLD.pt NEW.pt

Prints the median time of one 128 x 128 query and of a batch of 8 for each, and their ratio; the ratio is what
carries over between machines (the absolute times depend on the machine's load).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from iris_engine.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {name: load_checkpoint(path).model.eval() for name, path in (("old", args.old), ("new", args.new))}
    size = models["new"].config.image_size
    image = torch.randn(1, 1, size, size)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 1
    batch = torch.randn(8, 1, size, size)
    times: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        tokens = {name: model.encode_task(image, mask)[0] for name, model in models.items()}
        for _ in range(args.repeats):
            for name, model in models.items():
                for case, queries in (("one query", image), ("batch of 8", batch)):
                    start = time.perf_counter()
                    model.segment(queries, tokens[name])
                    times.setdefault((case, name), []).append(time.perf_counter() - start)
    for case in ("one query", "batch of 8"):
        old, new = (statistics.median(times[(case, name)]) for name in ("old", "new"))
        print(f"{case}: old {old:.4f} s, new {new:.4f} s, new/old {new / old:.2f}")


if __name__ == "__main__":
    main()
