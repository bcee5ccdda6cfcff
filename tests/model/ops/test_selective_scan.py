import pytest
import torch

from napari_ssmamba.errors import BackendUnavailableError
from napari_ssmamba.model.ops import (
    available_backends,
    direction_order,
    grid_scan,
    resolve_backend,
    selective_scan,
    selective_scan_ref,
)
from napari_ssmamba.model.ops.grid_scan import grid_scan_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _inputs(batch=2, dim=6, length=29, n_state=4, groups=None, device="cpu", dtype=torch.float32,
            with_z=True):
    g = (batch, groups, n_state, length) if groups else (batch, n_state, length)
    t = dict(
        u=torch.randn(batch, dim, length),
        delta=torch.randn(batch, dim, length) * 0.5,
        A=-torch.rand(dim, n_state) * 4 - 0.1,
        B=torch.randn(g),
        C=torch.randn(g),
        D=torch.randn(dim),
        z=torch.randn(batch, dim, length) if with_z else None,
        delta_bias=torch.randn(dim) * 0.3,
    )
    low = ("u", "delta", "B", "C", "z")
    return {k: None if v is None else
            v.to(device, dtype if k in low else torch.float32).requires_grad_() for k, v in t.items()}


def _check(backend, inputs, rtol, atol, delta_softplus=True):
    ref_inputs = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**inputs, delta_softplus=delta_softplus, backend=backend)
    ref = selective_scan_ref(**ref_inputs, delta_softplus=delta_softplus)
    assert out.dtype == inputs["u"].dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    for name, x in inputs.items():
        if x is not None:
            torch.testing.assert_close(x.grad.float(), ref_inputs[name].grad.float(), rtol=rtol,
                                       atol=atol * 4, msg=f"gradient of {name}")


@pytest.mark.parametrize("length", [1, 7, 64, 100])
@pytest.mark.parametrize("groups", [None, 2])
def test_cpu_backend_matches_ref(length, groups):
    _check("cpu", _inputs(length=length, groups=groups), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [None, 3])
def test_cpu_backend_matches_ref_without_grad(groups):
    inputs = {k: None if v is None else v.detach() for k, v in _inputs(length=50, groups=groups).items()}
    with torch.no_grad():  # the in-place inference loop
        out = selective_scan(**inputs, delta_softplus=True, backend="cpu")
        ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_cpu_backend_without_optional_terms():
    inputs = _inputs(with_z=False)
    inputs["D"] = inputs["delta_bias"] = None
    inputs["delta"] = inputs["delta"].detach().abs().requires_grad_()
    _check("cpu", inputs, rtol=1e-4, atol=1e-4, delta_softplus=False)


def test_auto_backend_on_cpu_is_the_cpu_path():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert available_backends("cpu") == ["cpu", "ref"]


@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
def test_gpu_backends_are_refused_on_cpu_tensors(backend):
    with pytest.raises(BackendUnavailableError, match="pip install"):
        selective_scan(**_inputs(), backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown scan backend"):
        resolve_backend("numpy", "cpu")


def test_direction_orders_visit_every_token_once():
    for k in range(4):
        order = direction_order(k, 3, 5)
        assert sorted(order.tolist()) == list(range(15))
    assert direction_order(2, 3, 5)[:3].tolist() == [0, 5, 10]  # down the first column
    assert direction_order(1, 3, 5)[0].item() == 14


def _grid_inputs(batch=2, hw=(5, 6), dim=8, n_state=4, n_dir=4, device="cpu", dtype=torch.float32):
    length = hw[0] * hw[1]
    t = dict(u=torch.randn(batch, length, dim), delta=torch.randn(batch, length, dim) * 0.5,
             A=-torch.rand(n_dir, dim, n_state) * 4 - 0.1, B=torch.randn(batch, length, n_state),
             C=torch.randn(batch, length, n_state), D=torch.randn(n_dir, dim),
             delta_bias=torch.randn(n_dir, dim) * 0.3)
    low = ("u", "delta", "B", "C")
    return {k: v.to(device, dtype if k in low else torch.float32).requires_grad_() for k, v in t.items()}


def test_grid_scan_matches_one_scan_per_direction():
    inputs = _grid_inputs()
    y = grid_scan(**inputs, hw=(5, 6), backend="cpu")
    assert y.shape == (4, 2, 30, 8)
    for k in range(4):
        order = direction_order(k, 5, 6)
        seq = {n: inputs[n][:, order].transpose(1, 2) for n in ("u", "delta", "B", "C")}
        y_k = selective_scan_ref(**seq, A=inputs["A"][k], D=inputs["D"][k],
                                 delta_bias=inputs["delta_bias"][k], delta_softplus=True)
        torch.testing.assert_close(y[k][:, order], y_k.transpose(1, 2), rtol=1e-4, atol=1e-4)


def test_grid_scan_from_a_later_direction_matches_those_directions():
    inputs = _grid_inputs()
    y = grid_scan(**inputs, hw=(5, 6), backend="cpu")
    later = {k: v[2:] if k in ("A", "D", "delta_bias") else v for k, v in inputs.items()}
    torch.testing.assert_close(grid_scan(**later, hw=(5, 6), backend="cpu", first_direction=2), y[2:])
    with pytest.raises(ValueError, match="exceed"):
        grid_scan(**later, hw=(5, 6), backend="cpu", first_direction=3)


def _check_grid(backend, dtype, rtol, atol, hw=(7, 9), **kw):
    inputs = _grid_inputs(hw=hw, device="cuda", dtype=dtype, **kw)
    ref_inputs = {k: v.detach().float().clone().requires_grad_() for k, v in inputs.items()}
    y = grid_scan(**inputs, hw=hw, backend=backend)
    y_ref = grid_scan_reference(**ref_inputs, hw=hw, backend="ref")
    torch.testing.assert_close(y.float(), y_ref, rtol=rtol, atol=atol)
    grad = torch.randn_like(y_ref)
    y.backward(grad.to(y.dtype))
    y_ref.backward(grad)
    for name, x in inputs.items():
        torch.testing.assert_close(x.grad.float(), ref_inputs[name].grad, rtol=rtol, atol=atol * 4,
                                   msg=f"gradient of {name}")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
@pytest.mark.parametrize("length", [1, 33, 196, 1100])
@pytest.mark.parametrize("groups", [None, 2])
def test_gpu_backend_matches_ref_fp32(backend, length, groups):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    _check(backend, _inputs(dim=32, length=length, n_state=16, groups=groups, device="cuda"),
           rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
def test_gpu_backend_matches_ref_bf16(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    _check(backend, _inputs(dim=64, length=196, n_state=8, device="cuda", dtype=torch.bfloat16),
           rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("hw", [(7, 9), (14, 14), (1, 5)])
def test_triton_grid_scan_matches_reference(dtype, tol, hw):
    if "triton" not in available_backends("cuda"):
        pytest.skip("triton not installed")
    _check_grid("triton", dtype, tol, tol, hw=hw)
