"""The current VoxelMorph API (voxelmorph 0.3.4, ``voxelmorph.nn``): ``modules``."""
from fastreg.compat.voxelmorph.nn import modules

__all__ = ["modules"]
