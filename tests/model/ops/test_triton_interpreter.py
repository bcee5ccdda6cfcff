"""The Triton kernels, forward and backward, run on the CPU through Triton's interpreter."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import torch
    from napari_ssmamba.model.ops import selective_scan_ref
    from napari_ssmamba.model.ops.grid_scan import grid_scan_reference
    from napari_ssmamba.model.ops.triton_scan import grid_scan_triton, selective_scan_triton

    torch.manual_seed(0)

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape) * scale + shift).requires_grad_()

    def compare(fn, ref_fn, inputs):
        ref_inputs = [x.detach().clone().requires_grad_() for x in inputs]
        y, y_ref = fn(*inputs), ref_fn(*ref_inputs)
        grad = torch.randn_like(y_ref)
        y.backward(grad)
        y_ref.backward(grad)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        for x, r in zip(inputs, ref_inputs):
            torch.testing.assert_close(x.grad, r.grad, rtol=1e-4, atol=1e-4)

    for batch, dim, length, n_state, groups in [(2, 4, 70, 4, None), (1, 4, 5, 8, 2)]:
        bc = (batch, groups, n_state, length) if groups else (batch, n_state, length)
        A = (-torch.rand(dim, n_state) * 3 - 0.1).requires_grad_()
        inputs = [leaf(batch, dim, length), leaf(batch, dim, length, scale=0.5), A, leaf(*bc),
                  leaf(*bc), leaf(dim), leaf(batch, dim, length), leaf(dim, scale=0.3)]
        compare(lambda *t: selective_scan_triton(*t, delta_softplus=True),
                lambda *t: selective_scan_ref(*t, delta_softplus=True), inputs)

    H, W, E, K, N = 3, 5, 4, 4, 4
    A = (-torch.rand(K, E, N) * 3 - 0.1).requires_grad_()
    inputs = [leaf(2, H * W, E), leaf(2, H * W, E, scale=0.5), A, leaf(2, H * W, N), leaf(2, H * W, N),
              leaf(K, E), leaf(K, E, scale=0.3)]
    compare(lambda *t: grid_scan_triton(*t, (H, W)),
            lambda *t: grid_scan_reference(*t, (H, W), backend="ref"), inputs)
    A = (-torch.rand(2, E, N) * 3 - 0.1).requires_grad_()
    inputs = [leaf(2, H * W, E), leaf(2, H * W, E, scale=0.5), A, leaf(2, H * W, N), leaf(2, H * W, N),
              leaf(2, E), leaf(2, E, scale=0.3)]
    compare(lambda *t: grid_scan_triton(*t, (H, W), first_direction=2),
            lambda *t: grid_scan_reference(*t, (H, W), backend="ref", first_direction=2), inputs)
    from napari_ssmamba.model.ops import merge_gate_reference
    from napari_ssmamba.model.ops.triton_scan import merge_gate_triton

    y, y_pool, w, w_pool = leaf(4, 2, 5, 7, 6), leaf(4, 2, 3, 4, 6), leaf(4, 6), leaf(4, 6)
    z_full = leaf(2, 5, 7, 12)  # z is a channel slice, as in the mixer
    compare(lambda y, yp, w, wp, zf: merge_gate_triton(y, yp, w, wp, zf[..., 6:]),
            lambda y, yp, w, wp, zf: merge_gate_reference(y, yp, w, wp, zf[..., 6:]),
            [y, y_pool, w, w_pool, z_full])
    print("ok")
""")


def test_triton_kernels_match_the_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
