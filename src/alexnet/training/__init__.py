"""Training: the paper's recipe at modern speed, one CPU to many GPUs, crash-proof checkpoints.

    >>> from alexnet.training import preset, train
    >>> cfg = preset("demo"); cfg.out = "runs/try"
    >>> result = train(cfg)                # RUN/checkpoints, metrics.jsonl, tb/, summary.json
"""

from alexnet.training.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    from_dict,
    load_file,
    preset,
    resolve,
)
from alexnet.training.trainer import TrainingError, TrainResult, format_summary, train

__all__ = [
    "PRESETS",
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "format_summary",
    "from_dict",
    "load_file",
    "preset",
    "resolve",
    "train",
]
