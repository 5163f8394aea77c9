"""Drop-in shims with the exact signatures of the peers' classes, computed by fastreg ops.

``fastreg.compat.voxelmorph`` mirrors the widely copied VoxelMorph PyTorch layers
(voxelmorph/torch/layers.py, losses.py); ``fastreg.compat.monai`` mirrors MONAI's
registration blocks and losses. Each equals the original to 1e-6 (tests compare with the
installed packages and with the published formulas).
"""
