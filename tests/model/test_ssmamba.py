import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_ssmamba.model import create_model, list_models
from napari_ssmamba.model.blocks import LPR, AttentionBlock, ConvBlock, DMSBlock


def test_registry_lists_every_size():
    assert {"ssmamba_test", "ssmamba_tiny", "ssmamba_small", "ssmamba_base"} <= set(list_models())
    assert list_models("*tiny") == ["ssmamba_tiny"]
    assert "ssmamba_test" not in list_models(exclude="*test")
    with pytest.raises(ValueError, match="ssmamba_tiny"):
        create_model("ssmamba_huge")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [224, 512])
def test_shapes_every_size(name, size):
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, size, size))
        logits = model.forward_head(feats)
    assert feats.shape == (1, model.num_features)
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    cfg = model.pretrained_cfg
    assert (cfg["tile_size"], cfg["mpp"]) == (224, 0.5) and len(cfg["mean"]) == len(cfg["std"]) == 3


def test_has_every_block_type():
    model = create_model("ssmamba_test")
    kinds = {type(m) for m in model.modules()}
    assert {ConvBlock, DMSBlock, AttentionBlock, LPR} <= kinds


def test_head_api():
    model = create_model("ssmamba_test", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert torch.equal(model.forward_head(feats, pre_logits=True), feats)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_odd_input_size():
    model = create_model("ssmamba_test", num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 100, 76)).shape == (1, 2)


def test_grad_checkpointing_gives_same_gradients():
    model = create_model("ssmamba_test", num_classes=2)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        if g is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g)


def test_scan_backends_agree_in_the_model():
    model = create_model("ssmamba_test", num_classes=2).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        model.set_scan_backend("cpu")
        fast = model(x)
        model.set_scan_backend("ref")
        ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_forward_masked_replaces_tokens_with_the_mask_token():
    model = create_model("ssmamba_test").eval()
    x = torch.randn(2, 3, 64, 64)
    none = torch.zeros(2, 2, 2, dtype=torch.bool)
    out = model.forward_masked(x, none)
    assert out.shape == (2, model.num_features, 2, 2)
    torch.testing.assert_close(out, model.forward_feature_map(x).permute(0, 3, 1, 2))
    mask = torch.rand(2, 16, 16) < 0.6  # stem resolution
    masked = model.forward_masked(x, mask)
    assert not torch.allclose(masked, out)
    masked.square().mean().backward()
    assert model.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="does not divide"):
        model.forward_masked(x, torch.zeros(2, 3, 3, dtype=torch.bool))


def test_lpr_maps_on_a_real_patch(data_dir):
    import tifffile

    image = tifffile.imread(data_dir / "patches" / "nct-crc-he-100k" / "LYM-AATTSRNN.tif")
    x = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)[None].float() / 255
    model = create_model("ssmamba_test").eval()
    maps = model.lpr_maps(x)
    assert maps.shape == (1, *x.shape[-2:])
    assert maps.min() == 0 and maps.max() == 1


def test_forward_with_lpr_equals_forward_and_lpr_maps():
    model = create_model("ssmamba_test", num_classes=3).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        logits, maps = model.forward_with_lpr(x)
        assert torch.equal(logits, model(x))
        assert torch.equal(maps, model.lpr_maps(x))
        assert maps.shape == (3, 64, 64)
        _, maps_stage3 = model.forward_with_lpr(x, stages=(3,))
    assert not torch.equal(maps_stage3, maps)


def test_lpr_maps_from_several_threads_share_one_model():
    from concurrent.futures import ThreadPoolExecutor

    model = create_model("ssmamba_test").eval()
    inputs = [torch.randn(2, 3, 32 + 16 * i, 64) for i in range(6)]  # sizes differ per call
    expected = [model.lpr_maps(x) for x in inputs]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(model.lpr_maps, inputs))
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name,digest", [("ssmamba_tiny", "70b615c037ea5f44"),
                                          ("ssmamba_test", "75487643546280b4")])
def test_bundled_sizes_keep_their_parameter_layout(name, digest):
    # the default checkpoint is an ssmamba_tiny and tests use ssmamba_test: their keys and shapes
    # (sha256 of the sorted "key:shape" lines) must not move
    import hashlib

    state = create_model(name, num_classes=1000).state_dict()
    layout = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(layout.encode()).hexdigest()[:16] == digest


def test_alternate_axes_and_attention_per_stage():
    model = create_model("ssmamba_test", num_directions=2, alternate_axes=True,
                         num_attention_blocks=(0, 0, 0, 1), depths=(1, 1, 3, 2)).eval()
    mixers = [b.mixer for b in model.stages[2].blocks]
    assert [m.first_direction for m in mixers] == [0, 2, 0]
    assert [type(b) for b in model.stages[3].blocks] == [DMSBlock, AttentionBlock]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        model.set_scan_backend("cpu")
        fast = model(x)
        model.set_scan_backend("ref")
        torch.testing.assert_close(fast, model(x), rtol=1e-4, atol=1e-4)


def _stripes(n, size=32):
    """Horizontal (class 0) vs vertical (class 1) stripes at random phase and period, plus noise."""
    labels = torch.arange(n) % 2
    coords = torch.arange(size).float()
    period = torch.randint(4, 9, (n, 1, 1)).float()
    phase = torch.rand(n, 1, 1) * 6.28
    rows = torch.sin(coords.view(1, -1, 1) * 6.28 / period + phase).expand(n, size, size)
    cols = torch.sin(coords.view(1, 1, -1) * 6.28 / period + phase).expand(n, size, size)
    images = torch.where(labels.view(-1, 1, 1) == 0, rows, cols)
    return (images[:, None].expand(n, 3, size, size) + 0.3 * torch.randn(n, 3, size, size)), labels


def test_learns_a_separable_task():
    x, y = _stripes(64)
    model = create_model("ssmamba_test", num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        idx = torch.randint(0, 64, (16,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    x_test, y_test = _stripes(64)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert accuracy >= 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
def test_gpu_scan_backend_matches_the_cpu_path_in_the_model(backend):
    from napari_ssmamba.model.ops import available_backends

    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    model = create_model("ssmamba_test", num_classes=3).cuda()
    x = torch.randn(2, 3, 96, 96, device="cuda")
    results = []
    for name in (backend, "cpu"):
        model.zero_grad()
        model.set_scan_backend(name)
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fused_inference_path_matches_the_plain_path():
    model = create_model("ssmamba_test", num_classes=3).cuda().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 96, 96, device="cuda")
    plain = model(x).detach()  # grad mode: no fused epilogues
    with torch.no_grad():
        fused = model(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused_bf16 = model(x).float()
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fused_bf16, plain, rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_alternate_axes_model_matches_the_cpu_path():
    model = create_model("ssmamba_test", num_classes=3, num_directions=2, alternate_axes=True,
                         num_attention_blocks=(0, 0, 1, 1), depths=(1, 1, 3, 2)).cuda().eval()
    x = torch.randn(2, 3, 96, 96, device="cuda")
    with torch.no_grad():
        model.set_scan_backend("triton")
        fast = model(x)
        model.set_scan_backend("cpu")
        ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-3, atol=1e-3)
