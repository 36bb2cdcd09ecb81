"""ssfdan_ext: fused kernels and a drop-in class-wise discriminator for SSF-DAN domain adaptation.

Start with :class:`SeparatedDiscriminator`, :func:`confidence_select`, :func:`adversarial_loss` and
:func:`discriminator_loss`; :mod:`ssfdan_ext.reference` holds the plain-PyTorch definition of every op.
"""
from ._ext import build_info, has_cuda_kernels
from .losses import adversarial_loss, discriminator_loss, domain_loss
from .nn import SeparatedDiscriminator, WithFeatures
from .ops import confidence_select, mode_downsample
from .schedule import rho_schedule
from .types import IGNORE, DiscriminatorOutput, Selection

__version__ = "0.1.0"

__all__ = [
    "IGNORE",
    "DiscriminatorOutput",
    "Selection",
    "SeparatedDiscriminator",
    "WithFeatures",
    "adversarial_loss",
    "build_info",
    "confidence_select",
    "discriminator_loss",
    "domain_loss",
    "has_cuda_kernels",
    "mode_downsample",
    "rho_schedule",
]
