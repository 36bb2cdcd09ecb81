"""Public functional ops: argument checks, backend choice, autograd and fake-tensor registration."""
from .confidence_select import confidence_select
from .mode_downsample import mode_downsample
from .routed_conv1x1 import RoutedRows, routed_conv1x1, routed_layer1_dense
from .sparse_conv3x3 import sparse_conv3x3
from .sparse_ssd_rulebook import Rulebook, sparse_ssd_rulebook

__all__ = [
    "RoutedRows", "Rulebook", "confidence_select", "mode_downsample", "routed_conv1x1", "routed_layer1_dense",
    "sparse_conv3x3", "sparse_ssd_rulebook",
]
