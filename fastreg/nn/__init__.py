"""nn.Modules over the fastreg ops (losses, layers)."""
from fastreg.nn.lncc import LNCCLoss

__all__ = ["LNCCLoss"]
