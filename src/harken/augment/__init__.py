"""Pseudo-anomalies made from normal training inputs (pseudo outlier exposure).

See :mod:`harken.augment.pseudo` for why they act on cached dB log-mel batches.
"""

from harken.augment.pseudo import (
    Augmentation,
    PseudoAnomalyMaker,
    create_augmentation,
    list_augmentations,
    register_augmentation,
)

__all__ = [
    "Augmentation",
    "PseudoAnomalyMaker",
    "create_augmentation",
    "list_augmentations",
    "register_augmentation",
]
