"""Selection maths over embeddings: k-center greedy and cluster-balanced sampling (the diversity step)."""

from __future__ import annotations

import numpy as np

from harness.core.ids import stable_hash


def k_center(x: np.ndarray, n: int, seed: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy k-center (Gonzalez 1985, the core-set selection of Sener & Savarese 2018): start from a seeded random
    row, then repeatedly add the row farthest (cosine distance) from everything chosen; within 2x of the optimal
    covering radius. Returns the chosen rows, and each row's distance to and index of its nearest chosen row."""
    first = int(np.random.default_rng(stable_hash("kcenter", seed) % 2**32).integers(len(x)))
    chosen = [first]
    dist = 1 - x @ x[first]
    nearest = np.full(len(x), first)
    dist[first] = -1  # chosen rows are marked -1, so that exact duplicates (distance 0) can still be picked after
    for _ in range(n - 1):  # each round is one matrix-vector product: n x rows x dims multiply-adds in all
        i = int(dist.argmax())
        chosen.append(i)
        d = 1 - x @ x[i]
        closer = d < dist
        dist[closer], nearest[closer] = d[closer], i
        dist[i], nearest[i] = -1, i
    return chosen, np.maximum(dist, 0), nearest


def nearest_chosen(x: np.ndarray, chosen: list[int], block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    c = x[chosen]
    dist, nearest = np.empty(len(x), np.float32), np.empty(len(x), int)
    for s in range(0, len(x), block):  # blocks keep the rows x chosen similarity matrix small
        sims = x[s:s + block] @ c.T
        j = sims.argmax(1)
        nearest[s:s + block] = np.asarray(chosen)[j]
        dist[s:s + block] = np.maximum(1 - sims[np.arange(len(j)), j], 0)
    return dist, nearest


def cluster_balanced(x: np.ndarray, n: int, clusters: int, seed: int) -> list[int]:
    """k-means into `clusters` groups, then one row per cluster in turn (each cluster's rows in seeded random
    order) until n: small clusters are emptied, big ones thinned, so rare kinds of prompt survive."""
    from sklearn.cluster import MiniBatchKMeans

    k = min(clusters, len(x))
    labels = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit_predict(x)
    rng = np.random.default_rng(stable_hash("clusters", seed) % 2**32)
    members = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(k)]
    chosen: list[int] = []
    while len(chosen) < n:
        for m in members:
            if m and len(chosen) < n:
                chosen.append(int(m.pop()))
    return chosen
