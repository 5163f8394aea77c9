"""Synthetic data generators (smooth random fields, label maps, intensities) and I/O."""
from fastreg.data.fields import random_smooth_field

__all__ = ["random_smooth_field"]
