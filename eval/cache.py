"""The leaderboard's per-cell cache: keys and files under ``<out>/cache``."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from an8flower.eval.report import atomic_write

__all__ = ["canonical", "cell_key", "CellCache"]


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(dataset_hash: str, image_ids: Sequence[int], model_hash: str, explainer: str,
             explainer_options: dict[str, Any], metric: str, metric_options: dict[str, Any]) -> str:
    """The cache key of a cell: SHA-256 of its inputs and the package version (hex)."""
    from an8flower import __version__

    payload = {
        "dataset": dataset_hash,
        "images": hashlib.sha256(canonical(list(map(int, image_ids))).encode()).hexdigest(),
        "model": model_hash,
        "explainer": explainer,
        "explainer_options": explainer_options,
        "metric": metric,
        "metric_options": metric_options,
        "version": __version__,
    }
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


class CellCache:
    """Cells as JSON files ``<out>/cache/<key[:2]>/<key>.json``; example heatmaps as ``.npz``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "cache")

    def _path(self, key: str, ext: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.{ext}")

    def get(self, key: str) -> Optional[dict[str, Any]]:
        path = self._path(key, "json")
        try:
            with open(path, encoding="utf-8") as fh:
                cell = json.load(fh)
        except (OSError, ValueError):
            return None
        return cell if cell.get("key") == key else None

    def put(self, key: str, cell: dict[str, Any]) -> None:
        atomic_write(self._path(key, "json"), json.dumps({**cell, "key": key}, allow_nan=True))

    def get_arrays(self, key: str) -> Optional[dict[str, np.ndarray]]:
        try:
            with np.load(self._path(key, "npz")) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None

    def put_arrays(self, key: str, **arrays: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(self._path(key, "npz"), buf.getvalue())
