"""Synthetic data generators (smooth random fields, label maps, intensities, pair streams)
and real image pairs for fine-tuning.

  fields       random_smooth_field (op tests, benchmarks), random_field, random_velocity
  labels       label_map: LabelM, SynthMorph, spheres, rectangles
  intensities  pair_contrast, render, random_colormap, apply_colormap, recolor_labels
  pairs        LabelMPairs, SynthMorphPairs (IterableDatasets of training pairs)
  image_pairs  ImagePairs (real image files through fastreg.io, optional labels)
``python -m fastreg.data --preview out.png`` draws a sheet of generated pairs.
"""
from fastreg.data.fields import random_field, random_smooth_field, random_velocity
from fastreg.data.image_pairs import ImagePairs
from fastreg.data.intensities import apply_colormap, pair_contrast, random_colormap, recolor_labels, render
from fastreg.data.labels import label_map
from fastreg.data.pairs import LabelMPairs, SynthMorphPairs

__all__ = [
    "random_smooth_field",
    "random_field",
    "random_velocity",
    "label_map",
    "pair_contrast",
    "render",
    "random_colormap",
    "apply_colormap",
    "recolor_labels",
    "LabelMPairs",
    "SynthMorphPairs",
    "ImagePairs",
]
