"""Public functional ops: argument checks, backend choice, autograd and fake-tensor registration."""
from .confidence_select import confidence_select
from .mode_downsample import mode_downsample

__all__ = ["confidence_select", "mode_downsample"]
