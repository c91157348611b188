"""``tl.train``: the training loop and checkpoints (safetensors + JSON, atomic, resumable)."""
from .checkpoint import CheckpointError, load_checkpoint, resolve, save_checkpoint
from .trainer import TrainConfig, Trainer, TrainingError, TrainResult, model_rngs, plot_metrics

__all__ = ["Trainer", "TrainConfig", "TrainResult", "TrainingError", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "resolve", "model_rngs", "plot_metrics"]
