"""Discriminator modules: the SS-D and the baselines of the ablation table."""
from .baselines import (GlobalDiscriminator, SoftDiscriminator, labelled_cells, soft_adversarial_loss,
                        soft_class_weights, soft_discriminator_loss)
from .features import WithFeatures
from .separated_discriminator import SeparatedDiscriminator, SSDPlan

__all__ = ["GlobalDiscriminator", "SSDPlan", "SeparatedDiscriminator", "SoftDiscriminator", "labelled_cells",
           "soft_adversarial_loss", "soft_class_weights", "soft_discriminator_loss", "WithFeatures"]
