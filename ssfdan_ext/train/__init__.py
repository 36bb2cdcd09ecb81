"""The training driver: SSF-DAN end to end and the baselines of its ablation table (``ssfdan-train``).

``load_config`` builds a :class:`TrainConfig` from YAML and ``key=value`` overrides; :func:`train` runs it
(resuming, validating, checkpointing, logging; multi-process under ``torchrun``).
"""
from .config import ADAPTATIONS, ConfigError, TrainConfig, from_dict, load_config
from .guards import DivergenceError, DriverError, OutDirLockedError
from .loop import Trainer, TrainResult, train

__all__ = ["ADAPTATIONS", "ConfigError", "DivergenceError", "DriverError", "OutDirLockedError", "TrainConfig",
           "TrainResult", "Trainer", "from_dict", "load_config", "train"]
