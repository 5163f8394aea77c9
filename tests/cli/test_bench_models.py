"""fastreg-bench --models: the peer op table computes what fastreg's ops compute, a model on
it matches the model on fastreg, and the CLI times a tiny model run (JSON rows, table)."""
import contextlib
import copy
import io
import json

import pytest
import torch

import fastreg
from fastreg.bench.model_cases import MODELS, grad_l2, model_cases, run_models
from fastreg.bench.peer_kernels import PEER_KERNELS, peer_lncc
from fastreg.cli.bench import main
from fastreg.data import random_smooth_field
from fastreg.models import DPConvC, DPVFA, CascadeUNet, available


@pytest.mark.parametrize("shape", [(9, 12, 10), (17, 14)])
def test_peer_ops_compute_what_fastreg_computes(shape):
    ndim = len(shape)
    x = torch.randn(2, 4, *shape, dtype=torch.float64)
    y = torch.randn(2, 4, *shape, dtype=torch.float64)
    u = random_smooth_field(shape, batch=2, dtype=torch.float64)
    v = random_smooth_field(shape, batch=2, dtype=torch.float64)
    close = torch.testing.assert_close
    for padding in ("zeros", "border"):
        close(PEER_KERNELS.warp(x, u, padding_mode=padding), fastreg.warp(x, u, padding_mode=padding))
    close(PEER_KERNELS.compose(u, v), fastreg.compose(u, v))
    close(PEER_KERNELS.resize_field(u, scale_factor=2.0), fastreg.resize_field(u, scale_factor=2.0))
    size = [s + 5 for s in shape]
    close(PEER_KERNELS.resize_field(u, size=size), fastreg.resize_field(u, size=size))
    close(PEER_KERNELS.integrate_svf(u, 5), fastreg.integrate_svf(u, 5))
    close(PEER_KERNELS.vfa_attention(x, y, radius=1), fastreg.vfa_attention(x, y, radius=1))
    close(PEER_KERNELS.local_correlation(x, y, 1, "rsqrt_channels", "zeros"),
          fastreg.local_correlation(x, y, 1, "rsqrt_channels", "zeros"))
    a, b = torch.rand(1, 1, *shape, dtype=torch.float64), torch.rand(1, 1, *shape, dtype=torch.float64)
    close(peer_lncc(a, b, 5), fastreg.lncc(a, b, 5))
    assert grad_l2(u).item() == pytest.approx(
        sum(torch.diff(u, dim=2 + k).square().mean().item() for k in range(ndim)) / ndim)


# (model, std of its flow heads' weights): fields of about a voxel or more in every model (the
# cascade's integrated velocity needs the larger weights: with 0.05 its largest displacement
# fell to 0.04 voxel for some seeds)
@pytest.mark.parametrize("build, flow_std", [
    (lambda: DPVFA(ndim=3, channels=(4, 8, 8), attention=(4, 8, 8)), 0.05),
    (lambda: DPConvC(ndim=3, channels=(4, 8, 8), widths=(4, 8, 8)), 0.05),
    (lambda: CascadeUNet(ndim=3, widths=(4, 8)), 0.2),
])
def test_a_model_on_the_peer_ops_is_the_same_model(build, flow_std):
    model = build().double()
    for name, p in model.named_parameters():
        if "flow" in name and name.endswith("weight"):
            torch.nn.init.normal_(p, 0.0, flow_std)
    peer = copy.deepcopy(model)
    peer.kernels = PEER_KERNELS
    fixed, moving = torch.rand(2, 1, 32, 32, 32, dtype=torch.float64), torch.rand(2, 1, 32, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = model(fixed, moving)
        assert ours.abs().max() > 0.05
        torch.testing.assert_close(peer(fixed, moving), ours)


def test_every_benchmarked_model_is_registered_and_unknown_names_are_refused():
    assert set(MODELS) <= set(available())
    with pytest.raises(ValueError, match="models: unknown model"):
        model_cases(["voxelmorph"])
    with pytest.raises(ValueError, match="sizes"):
        model_cases(["dpvfa"], "huge")
    large = model_cases(["dpvfa"], "large")
    # the peer does not fit at 96x112x96: a fastreg-only training row, then inference
    assert [c.dims for c in large] == [(1, 1, 96, 112, 96), (1, 1, 160, 192, 224)]
    assert [(c.train, c.peers) for c in large] == [(True, False), (False, True)]
    assert large[0].kwargs == large[1].kwargs == {}
    assert [(c.train, c.peers) for c in model_cases(["cascade"], "large")] == [(True, True), (False, True)]


def test_the_peer_version_is_built_with_the_peer_arguments():
    case = model_cases(["cascade"], "tiny")[0]
    ours, peer = case.build(), case.build(peer=True)
    assert ours.net2.recompute and not peer.net2.recompute
    rows = run_models([case], repeat=1)
    assert [r["impl"] for r in rows] == ["fastreg", "peer-ops"]


def test_a_solo_case_runs_fastreg_alone():
    case = model_cases(["dpvfa"], "tiny")[0]
    case.peers = False
    rows = run_models([case], repeat=1)
    assert [r["impl"] for r in rows] == ["fastreg"] and rows[0]["fwd_bwd_ms"] > 0


def test_cli_times_a_tiny_model_against_its_peer_version(capsys):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--models", "cascade", "--sizes", "tiny", "--repeat", "2", "--json"]) == 0
    rows = json.loads(out.getvalue())
    assert [r["impl"] for r in rows] == ["fastreg", "peer-ops"]
    for row in rows:
        assert row["op"] == "model" and row["case"].startswith("cascade 2d 1x1x32^2")
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["fwd_bwd_peak_bytes"] > 0
        assert len(row["fwd_bwd_rounds_ms"]) == 2
    assert rows[0]["ratio_fwd_bwd"] == 1.0 and rows[1]["ratio_fwd_bwd"] > 0
    assert main(["--models", "cascade", "--sizes", "tiny", "--repeat", "1", "--no-peers"]) == 0
    table = capsys.readouterr().out
    assert "cascade 2d 1x1x32^2" in table and "peer-ops" not in table


def test_cli_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--models", "vxm"])
    assert info.value.code == 2 and "--models" in capsys.readouterr().err


def test_run_models_inference_only_case_runs_fastreg_alone():
    case = model_cases(["cascade"], "tiny")[0]
    case.train = False
    rows = run_models([case], repeat=1)
    assert [r["impl"] for r in rows] == ["fastreg"] and rows[0]["fwd_ms"] > 0 and "fwd_bwd_ms" not in rows[0]
