"""Losses and regularisers (fastreg/nn/losses.py) against their originals: MONAI 1.6.1
(DiceLoss, BendingEnergyLoss), neurite's spatial_gradient (VoxelMorph's Grad), VoxelMorph's
NCC formula (fastreg.bench.peer_kernels), the papers' formulas for the presets; gradients; errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastreg
from fastreg.data import random_smooth_field
from fastreg.bench.peer_kernels import peer_lncc as vxm_ncc
from fastreg.nn import losses

monai_losses = pytest.importorskip("monai.losses")
neurite_functional = pytest.importorskip("neurite.nn.functional")

SHAPES = [(12, 15), (7, 9, 10)]


def field(shape, batch=2, dtype=torch.float64):
    return random_smooth_field(shape, batch=batch, magnitude=1.5, spacing=4, dtype=dtype).requires_grad_()


def grads(value, *inputs):
    return torch.autograd.grad(value, inputs, retain_graph=True)


# --- similarity ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_lncc_loss_is_one_minus_voxelmorph_ncc(shape):
    a = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    ours, theirs = losses.lncc_loss(a, b, 5), 1 - vxm_ncc(a, b, 5)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours, fastreg.nn.LNCCLoss(5, form="one_minus")(a, b))
    for g, h in zip(grads(ours, a, b), grads(theirs, a, b)):
        torch.testing.assert_close(g, h)


def soft_labels(shape, labels, batch=2):
    return torch.softmax(3 * torch.randn(batch, labels, *shape, dtype=torch.float64), 1).requires_grad_()


def mi_written_out(a, b, bins):
    """1 - 2 MI / (H(a) + H(b)) of two float64 images (numpy arrays), the joint histogram
    filled voxel by voxel with linear windows (mi_loss's docstring)."""
    joint = np.zeros((bins, bins))
    for x, y in zip(a.ravel(), b.ravel()):
        cells = []
        for v in (x, y):
            s = min(max(v, 0.0), 1.0) * (bins - 1)
            low = min(int(np.floor(s)), bins - 2)
            cells.append(((low, 1.0 - (s - low)), (low + 1, s - low)))
        for i, wi in cells[0]:
            for j, wj in cells[1]:
                joint[i, j] += wi * wj
    p = joint / a.size

    def entropy(q):
        q = q[q > 0]
        return -(q * np.log(q)).sum()

    h_a, h_b = entropy(p.sum(1)), entropy(p.sum(0))
    return 1.0 - 2.0 * (h_a + h_b - entropy(p.ravel())) / (h_a + h_b)


@pytest.mark.parametrize("shape", SHAPES)
def test_mi_loss_is_one_minus_normalised_mi_of_the_parzen_histogram(shape):
    a = torch.rand(2, 1, *shape, dtype=torch.float64) * 1.2 - 0.1  # some values outside [0, 1]
    b = torch.rand(2, 1, *shape, dtype=torch.float64)
    b[1] = (a[1] + 0.3 * b[1]).clamp(0, 1)  # a related pair: the loss well below 1
    ours = losses.mi_loss(a, b, bins=8, reduction="none")
    expected = torch.tensor([mi_written_out(a[i].numpy(), b[i].numpy(), 8) for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(ours, expected)
    assert ours[1] < ours[0] - 0.1
    torch.testing.assert_close(losses.mi_loss(a, b, bins=8), expected.mean())
    torch.testing.assert_close(fastreg.nn.MILoss(8, "sum")(a, b), expected.sum())
    part = (slice(None), slice(None), slice(0, 4))  # fewer inputs for the numerical Jacobian
    assert torch.autograd.gradcheck(lambda x, y: losses.mi_loss(x, y, bins=8, reduction="none"),
                                    (a[part].clamp(0.02, 0.98).requires_grad_(), b[part].clamp(0.02, 0.98).requires_grad_()))


def test_mi_loss_ignores_how_contrasts_map_and_sees_misalignment():
    """An image and any bijective remap of its bins score alike (here the inverted contrast
    and a non-monotonic lookup table); a shifted copy scores worse than both. LNCC scores
    the remapped copy as a different image (0.34 above a perfect match at least, over 300
    draws)."""
    a = fastreg.data.intensities.min_max(random_smooth_field((48, 40), spacing=4, dtype=torch.float64)[:, :1])
    bins = 16
    q = (a * (bins - 1)).round() / (bins - 1)  # on bin centres: the windows are exact there
    lut = torch.randperm(bins, dtype=torch.float64) / (bins - 1)
    remapped = lut[(q * (bins - 1)).round().long()]
    shifted = torch.roll(q, shifts=(3, 2), dims=(2, 3))
    same = losses.mi_loss(q, q, bins)
    torch.testing.assert_close(losses.mi_loss(q, 1.0 - q, bins), same)
    torch.testing.assert_close(losses.mi_loss(q, remapped, bins), same)
    assert losses.mi_loss(q, shifted, bins) > same + 0.1
    assert losses.lncc_loss(q, remapped, 7) > losses.lncc_loss(q, q, 7) + 0.2


def test_mi_loss_nan_and_bad_arguments():
    a, b = torch.rand(2, 1, 6, 7), torch.rand(2, 1, 6, 7)
    a[1, 0, 2, 3] = float("nan")
    out = losses.mi_loss(a, b, reduction="none")
    assert torch.isfinite(out[0]) and torch.isnan(out[1])
    with pytest.raises(ValueError, match="bins: expected an int >= 2"):
        losses.mi_loss(a, b, bins=1)
    with pytest.raises(ValueError, match="warped: expected the shape of fixed"):
        losses.mi_loss(a, b[..., :5])
    with pytest.raises(ValueError, match="reduction: expected one of"):
        losses.mi_loss(a, b, reduction="max")
    loss = fastreg.nn.loss_for("nio", similarity="mi", bins=16)
    u = torch.zeros(2, 2, 6, 7)
    torch.testing.assert_close(loss(b, b.flip(3), u), 0.6 * losses.mi_loss(b, b.flip(3), 16))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_int_and_probabilities_equal_monai(shape, include_background):
    L = 5
    fixed = torch.randint(0, L, (2, 1, *shape))
    warped = soft_labels(shape, L)
    monai = monai_losses.DiceLoss(include_background=include_background, to_onehot_y=True)
    ours, theirs = losses.dice_loss(fixed, warped, include_background=include_background), monai(warped, fixed)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grads(ours, warped)[0], grads(theirs, warped)[0])
    # the same with the arguments swapped and with the fixed labels one-hot (probabilities)
    torch.testing.assert_close(losses.dice_loss(warped, fixed, include_background=include_background), theirs)
    onehot = F.one_hot(fixed[:, 0], L).movedim(-1, 1).double()
    torch.testing.assert_close(losses.DiceLoss(include_background=include_background)(onehot, warped), theirs)


def test_dice_of_two_int_label_maps_is_the_hard_dice():
    shape, L = (9, 11, 6), 4
    fixed, warped = torch.randint(0, L, (2, 1, *shape)), torch.randint(0, L, (2, 1, *shape))
    onehot = [F.one_hot(x[:, 0], L).movedim(-1, 1).double() for x in (fixed, warped)]
    expected = monai_losses.DiceLoss(include_background=False)(onehot[1], onehot[0])
    torch.testing.assert_close(losses.dice_loss(fixed, warped), expected)
    torch.testing.assert_close(losses.dice_loss(fixed, fixed), torch.tensor(0.0, dtype=torch.float64),
                               atol=1e-9, rtol=0)


def test_dice_gradcheck():
    fixed = torch.randint(0, 3, (1, 1, 4, 5))
    warped = soft_labels((4, 5), 3, batch=1)
    assert torch.autograd.gradcheck(lambda q: losses.dice_loss(fixed, q), (warped,))


# --- regularisers --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_grad_loss_equals_voxelmorph_grad(shape, penalty):
    u = field(shape)
    ours, theirs = losses.grad_loss(u, penalty), neurite_functional.spatial_gradient(u, penalty=penalty)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grads(ours, u)[0], grads(theirs, u)[0])
    torch.testing.assert_close(losses.GradLoss(penalty)(u), theirs)


@pytest.mark.parametrize("shape", SHAPES)
def test_grad_loss_sum_is_unireg_eq2(shape):
    """(1/N) sum_x (||d_x u||_1 + ||d_y u||_1): each axis's differences summed over components,
    averaged over their positions, summed over axes."""
    u = field(shape)
    expected = sum(torch.diff(u, dim=a).abs().sum(1).mean() for a in range(2, u.dim()))
    torch.testing.assert_close(losses.grad_loss(u, "l1", "sum"), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.filterwarnings("ignore::UserWarning")  # MONAI's list-indexing deprecation warning
def test_bending_energy_equals_monai(shape, normalize, reduction):
    u = field(shape)
    ours = losses.bending_energy(u, normalize, reduction)
    theirs = monai_losses.BendingEnergyLoss(normalize=normalize, reduction=reduction)(u)
    g, h = grads(ours.sum(), u)[0], grads(theirs.sum(), u)[0]
    if normalize:  # MONAI computes the normalising factors in float32: compare to 1e-6 of the range
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 * float(theirs.abs().max()))
        torch.testing.assert_close(g, h, rtol=0, atol=1e-6 * float(h.abs().max()))
    else:
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(g, h)
    torch.testing.assert_close(losses.BendingEnergyLoss(normalize, reduction)(u), ours)


def test_jacobian_loss_function_is_the_module():
    u = field((10, 12), dtype=torch.float64)
    for eps in (0.0, 0.3):
        expected = torch.relu(eps - fastreg.jacobian_det(u)).mean()
        torch.testing.assert_close(fastreg.nn.jacobian_loss(u, eps), expected)
        torch.testing.assert_close(fastreg.nn.JacobianLoss(eps)(u), expected)
    assert expected > 0  # the field folds somewhere, so the penalty is tested on live voxels


# --- the papers' losses --------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_presets_equal_the_papers_formulas(shape):
    fixed = torch.rand(2, 1, *shape, dtype=torch.float64)
    warped = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    u = field(shape)
    grad_l2 = neurite_functional.spatial_gradient(u, penalty="l2")
    eq2 = sum(torch.diff(u, dim=a).abs().sum(1).mean() for a in range(2, u.dim()))
    window9 = min(9, min(shape) - (1 - min(shape) % 2))  # the window must fit the image
    expected = {
        "unireg": F.mse_loss(fixed, warped) + 0.01 * eq2,
        "dpvfa": (1 - vxm_ncc(fixed, warped, window9)) + 1.0 * grad_l2,
        "nio": 0.6 * (1 - vxm_ncc(fixed, warped, 7)) + 0.4 * grad_l2,
    }
    for name, value in expected.items():
        loss = fastreg.nn.loss_for(name, window=window9) if name == "dpvfa" else fastreg.nn.loss_for(name)
        ours = loss(fixed, warped, u)
        torch.testing.assert_close(ours, value)
        for g, h in zip(grads(ours, warped, u), grads(value, warped, u)):
            torch.testing.assert_close(g, h)
    labels = torch.randint(0, 4, (2, 1, *shape))
    probs = soft_labels(shape, 4)
    cascade = fastreg.nn.loss_for("cascade")
    terms = cascade.terms(None, None, u, fixed_labels=labels, warped_labels=probs)
    dice = monai_losses.DiceLoss(include_background=False, to_onehot_y=True)(probs, labels)
    torch.testing.assert_close(terms["similarity"], dice)
    torch.testing.assert_close(terms["regularization"], grad_l2)
    torch.testing.assert_close(terms["total"], dice + 0.75 * grad_l2)
    torch.testing.assert_close(cascade(None, None, u, fixed_labels=labels, warped_labels=probs), terms["total"])
    synthmorph = fastreg.nn.loss_for("synthmorph").terms(None, None, u, fixed_labels=labels, warped_labels=probs)
    torch.testing.assert_close(synthmorph["total"], dice + 1.0 * grad_l2)


def test_preset_overrides():
    loss = fastreg.nn.loss_for("dpvfa", reg_weight=0.25, window=5)
    assert loss.reg_weight == 0.25 and loss.lncc.window == 5 and loss.similarity == "lncc"


def test_bad_arguments_name_themselves():
    u = field((8, 8))
    with pytest.raises(ValueError, match="penalty: expected one of"):
        losses.grad_loss(u, "l3")
    with pytest.raises(ValueError, match="disp: expected 2 channels"):
        losses.grad_loss(u[:, :1])
    with pytest.raises(ValueError, match="disp: expected every spatial size > 2"):
        losses.bending_energy(u[:, :, :2])
    with pytest.raises(ValueError, match="name: expected one of"):
        fastreg.nn.loss_for("voxelmorph")
    with pytest.raises(ValueError, match="fixed_labels, warped_labels: the dice similarity needs both"):
        fastreg.nn.loss_for("cascade")(None, None, u)
    with pytest.raises(ValueError, match="warped: expected the shape of fixed"):
        fastreg.nn.loss_for("unireg")(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 7), u)
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    with pytest.raises(ValueError, match="warped_labels: expected batch and spatial size"):
        losses.dice_loss(labels, soft_labels((8, 7), 3))
    with pytest.raises(ValueError, match="fixed_labels: expected labels in \\[0, 2\\)"):
        losses.dice_loss(labels, soft_labels((8, 8), 2))
    with pytest.raises(ValueError, match="fixed_labels: expected int labels of shape \\(B, 1, \\*S\\)"):
        losses.dice_loss(labels.expand(-1, 2, -1, -1), soft_labels((8, 8), 3))
    with pytest.raises(ValueError, match="warped_labels: expected 3 label channels"):
        losses.dice_loss(soft_labels((8, 8), 3), soft_labels((8, 8), 4))
    with pytest.raises(TypeError, match="fixed_labels: expected a torch.Tensor"):
        losses.dice_loss([[0]], soft_labels((8, 8), 3))
    with pytest.raises(ValueError, match="reg_weight: expected a number >= 0"):
        losses.RegistrationLoss(reg_weight=-1.0)
