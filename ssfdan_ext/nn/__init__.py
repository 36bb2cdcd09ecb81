"""Discriminator modules."""
from .separated_discriminator import SeparatedDiscriminator

__all__ = ["SeparatedDiscriminator"]
