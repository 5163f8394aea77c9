"""Synthetic data generators (smooth random fields, label maps, intensities) and I/O."""
from fastreg.data.fields import random_smooth_field
from fastreg.data.image_pairs import ImagePairs

__all__ = ["random_smooth_field", "ImagePairs"]
