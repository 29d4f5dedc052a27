"""Making datasets: public sources -> photo groups -> split plan -> written split (manifest, images,
masks) -> shortcut audit; the dataset loader, the built-in synthetic impellers, downloads.

``from impeller_bench.data import load_dataset`` loads a dataset folder."""
from .dataset import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
