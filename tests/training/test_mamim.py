import pytest
import torch

from napari_ssmamba.model import load_checkpoint
from napari_ssmamba.training.config import FinetuneConfig, PretrainConfig
from napari_ssmamba.training.finetune import build_classifier
from napari_ssmamba.training.mamim import build_masked_image_model, pretrain, random_masks


def test_random_masks_mask_the_given_share():
    masks = random_masks(4, (4, 4), 0.6, torch.Generator().manual_seed(0))
    assert masks.shape == (4, 4, 4) and masks.dtype == torch.bool
    assert (masks.flatten(1).sum(1) == 10).all()
    assert not torch.equal(masks[0], masks[1])


def test_loss_counts_only_masked_pixels():
    torch.manual_seed(0)
    model = build_masked_image_model("ssmamba_test", mask_patch_size=8)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, 0] = True
    loss = model(x, mask)
    loss.backward()
    with torch.no_grad():
        rec = model.decoder(model.backbone.forward_masked(x, mask))
        expected = (rec - x)[:, :, :8, :8].abs().mean()
    torch.testing.assert_close(loss, expected)
    assert model.backbone.mask_token.grad.abs().sum() > 0


def test_mask_patch_must_fit_the_token_stride():
    with pytest.raises(ValueError, match="token stride"):
        build_masked_image_model("ssmamba_test", mask_patch_size=6)


def test_short_mamim_run_reduces_loss_and_seeds_finetuning(small_task, tmp_path, torch_threads):
    train, _ = small_task
    config = PretrainConfig(arch="ssmamba_test", out=str(tmp_path), epochs=4, batch_size=16, lr=3e-3,
                            warmup_epochs=0.5, mask_patch_size=8, device="cpu")
    result = pretrain(config, train)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.8 * losses[0]
    backbone, card = load_checkpoint(result["checkpoint"], require_classes=False)
    assert card.class_names == [] and card.training["method"] == "mamim"
    assert card.training["mask_patch_size"] == 8
    classifier = build_classifier(FinetuneConfig(arch="ssmamba_test", init=str(result["checkpoint"])), 3)
    torch.testing.assert_close(classifier.stages[3].state_dict(), backbone.stages[3].state_dict())
    assert classifier.head.out_features == 3
