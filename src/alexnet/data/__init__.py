"""Everything between image files on disk and normalised batches on the device."""

from alexnet.data.dataset import ImageDataset, open_dataset, resolve_data
from alexnet.data.decode import load_resized, read_image
from alexnet.data.folder import FolderDataset
from alexnet.data.imagenet import IMAGENET_CLASSES
from alexnet.data.loader import make_loader
from alexnet.data.stats import DatasetStats, compute_stats
from alexnet.data.transforms import EvalTransform, Normalize, TrainAugment
from alexnet.errors import DatasetError, DecodeError

__all__ = [
    "IMAGENET_CLASSES",
    "DatasetError",
    "DatasetStats",
    "DecodeError",
    "EvalTransform",
    "FolderDataset",
    "ImageDataset",
    "Normalize",
    "TrainAugment",
    "compute_stats",
    "load_resized",
    "make_loader",
    "open_dataset",
    "read_image",
    "resolve_data",
]
