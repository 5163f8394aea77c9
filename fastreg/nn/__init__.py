"""nn.Modules over the ops: transformers, integrators, losses."""
from fastreg.nn.integrate import ResizeField, VecInt
from fastreg.nn.jacobian import JacobianLoss, jacobian_loss
from fastreg.nn.lncc import LNCCLoss
from fastreg.nn.warp import SpatialTransformer
from fastreg.nn.losses import (BendingEnergyLoss, DiceLoss, GradLoss, RegistrationLoss, bending_energy, dice_loss,
                               grad_loss, lncc_loss, loss_for, mi_loss, MILoss)

__all__ = ["SpatialTransformer", "VecInt", "ResizeField", "LNCCLoss", "JacobianLoss",
           "jacobian_loss", "lncc_loss", "mi_loss", "MILoss", "dice_loss", "DiceLoss", "grad_loss", "GradLoss", "bending_energy",
           "BendingEnergyLoss", "RegistrationLoss", "loss_for"]
