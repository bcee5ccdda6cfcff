import pytest
import torch
import torch.nn.functional as F

from napari_ssmamba.model.blocks import LPR, BatchNormLast, ConvBlock, Downsample, Stem


def _randomise_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)


def test_lpr_folded_residual_equals_x_plus_branch():
    lpr = LPR(8)
    x = torch.randn(2, 5, 6, 8)
    expected = x + lpr.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(lpr(x), expected)
    responses = []
    torch.testing.assert_close(lpr(x, responses), expected)
    branch = lpr.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert len(responses) == 1
    torch.testing.assert_close(responses[0], branch.norm(dim=-1))


def test_conv_block_folds_batchnorm_exactly():
    block = ConvBlock(8).eval()
    _randomise_bn(block.norm)
    x = torch.randn(2, 5, 6, 8)
    with torch.no_grad():
        h = block.lpr(x)
        expected = h + block.mlp(block.norm(h))
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(6, 8), (5, 7)])
def test_downsample_folds_batchnorm_exactly(hw):
    down = Downsample(8, 16, norm="batch").eval()
    _randomise_bn(down.norm)
    x = torch.randn(2, *hw, 8)
    with torch.no_grad():
        h = down.norm(x)
        h = F.pad(h, (0, 0, 0, hw[1] % 2, 0, hw[0] % 2))
        expected = down.conv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(down(x), expected, rtol=1e-5, atol=1e-5)


def test_stem_folds_batchnorm_exactly():
    stem = Stem(3, 16).eval()
    _randomise_bn(stem.norm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stem.norm(stem.conv2(stem.act(stem.conv1(x)))).permute(0, 2, 3, 1)
        torch.testing.assert_close(stem(x), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_last_normalises_the_channel_axis():
    bn = BatchNormLast(4)
    x = torch.randn(8, 3, 3, 4) * 3 + 2
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 1, 2)), torch.zeros(4), atol=1e-5, rtol=0)


def test_convert_sync_batchnorm_keeps_channels_last_and_state():
    import torch.nn as nn

    from napari_ssmamba.model import convert_sync_batchnorm, create_model
    from napari_ssmamba.model.blocks import BatchNormLast, SyncBatchNormLast

    model = create_model("ssmamba_test", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    param_ids = {id(p) for p in model.parameters()}
    n_last = sum(isinstance(m, BatchNormLast) for m in model.modules())
    n_plain = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    assert n_last > 0 and n_plain > 0
    converted = convert_sync_batchnorm(model)
    assert sum(isinstance(m, SyncBatchNormLast) for m in converted.modules()) == n_last
    assert sum(type(m) is nn.SyncBatchNorm for m in converted.modules()) == n_plain
    assert not any(type(m) in (BatchNormLast, nn.BatchNorm2d) for m in converted.modules())
    after = converted.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {id(p) for p in converted.parameters()} == param_ids  # an earlier optimizer still trains them


@pytest.mark.gpu
def test_sync_batchnorm_last_matches_batchnorm_last_on_one_gpu():
    import torch.distributed as dist

    from napari_ssmamba.model.blocks import BatchNormLast, convert_sync_batchnorm

    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29561", rank=0, world_size=1)
    bn = BatchNormLast(8).cuda().train()
    sync = convert_sync_batchnorm(BatchNormLast(8).cuda().train())
    x = torch.randn(4, 5, 6, 8, device="cuda")
    torch.testing.assert_close(sync(x), bn(x))
