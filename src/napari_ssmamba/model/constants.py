"""Constants the model and its checkpoints share (as in ``timm.data.constants``)."""

#: ImageNet's per-channel mean and standard deviation, the default input normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
