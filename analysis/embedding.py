"""UMAP of decision features: fitted on clean inputs, attacked inputs transformed into it."""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler


def umap_embedding(clean: np.ndarray, others: dict[str, np.ndarray], *, n_neighbors: int = 15,
                   min_dist: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """2-D coordinates (float32) of ``clean`` and of every array in ``others``.

    Features are standardised with the clean inputs' statistics; a fixed ``seed`` makes the
    result reproducible (UMAP then runs single-threaded).
    """
    import umap  # imported here: it compiles with numba on first use (seconds)

    if not np.isfinite(clean).all() or not all(np.isfinite(v).all() for v in others.values()):
        raise ValueError("decision features contain NaN or infinity")
    scaler = StandardScaler().fit(clean)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1)
    coords = {"clean": reducer.fit_transform(scaler.transform(clean)).astype(np.float32)}
    for name, features in others.items():
        coords[name] = (reducer.transform(scaler.transform(features)).astype(np.float32) if len(features)
                        else np.zeros((0, 2), np.float32))
    return coords
