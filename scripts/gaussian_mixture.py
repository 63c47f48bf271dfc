"""A seeded Gaussian-mixture Parquet (8 classes of two anisotropic sub-clusters, 20 features, 2,000
rows, overlapping: an MLP gets about 0.86) for `bench/contributor_value.py --data FILE --label-col target`.

    python scripts/gaussian_mixture.py OUT.parquet [SEED]
"""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main(path, seed=7, classes=8, dim=20, per_class=250):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (classes, dim)) * 0.5
    xs, ys = [], []
    for k in range(classes):
        # each class: two sub-clusters with their own anisotropic scale
        for _ in range(2):
            m = means[k] + rng.normal(0, 0.6, dim)
            scale = rng.uniform(0.6, 1.4, dim)
            n = per_class // 2
            xs.append(m + rng.normal(0, 1, (n, dim)) * scale)
            ys += [f"class-{k}"] * n
    x = np.vstack(xs)
    cols = {f"f{i:02d}": x[:, i] for i in range(dim)}
    cols["target"] = ys
    pq.write_table(pa.table(cols), path)

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7)
