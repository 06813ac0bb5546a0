"""Everything between image files on disk and normalised batches on the device."""

from alexnet.data.decode import DecodeError, load_resized, read_image
from alexnet.data.folder import DatasetError, FolderDataset, open_dataset
from alexnet.data.imagenet import IMAGENET_CLASSES
from alexnet.data.loader import make_loader
from alexnet.data.stats import DatasetStats, compute_stats
from alexnet.data.transforms import EvalTransform, Normalize, TrainAugment

__all__ = [
    "IMAGENET_CLASSES",
    "DatasetError",
    "DatasetStats",
    "DecodeError",
    "EvalTransform",
    "FolderDataset",
    "Normalize",
    "TrainAugment",
    "compute_stats",
    "load_resized",
    "make_loader",
    "open_dataset",
    "read_image",
]
