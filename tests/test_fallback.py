"""Without the compiled extension the package imports, warns once, and runs on the reference."""
import subprocess
import sys

CODE = r"""
import importlib.abc, sys, warnings

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "fastreg._C":
            raise ImportError("blocked for the test")
        return None

sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastreg
    import fastreg.compat.monai, fastreg.compat.voxelmorph
import torch
from fastreg.reference import warp as ref
messages = [str(w.message) for w in caught if "fastreg._C" in str(w.message)]
assert len(messages) == 1, messages
assert fastreg.available_backends()[:1] == ["reference"] and "cpu" not in fastreg.available_backends()
image, disp = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64), torch.randn(1, 3, 5, 6, 7, dtype=torch.float64)
assert torch.equal(fastreg.warp(image, disp), ref.warp(image, disp))
v = (0.5 * disp).requires_grad_(True)
fastreg.lncc(fastreg.warp(image[:, :1], fastreg.integrate_svf(v)), image[:, 1:], window=3).backward()
assert v.grad is not None and torch.isfinite(v.grad).all()
fastreg.metrics.jacobian_stats(disp)
fastreg.vfa_attention(torch.randn(1, 4, 5, 6, 7), torch.randn(1, 4, 5, 6, 7))
print("ok")
"""


def test_works_without_compiled_extension():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
