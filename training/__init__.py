"""Training for SSMamba: MAMIM pretraining, fine-tuning, evaluation, datasets, DDP.

Importing this package is cheap; torch loads when a function below is first used.

- ``data``: :class:`~.data.TileSet` from slides + regions, images and class folders; group splits
- ``augment``: H&E augmentation (flips, rotations, HED stain jitter, colour, blur)
- ``mamim``: :func:`~.mamim.pretrain` (masked image modelling)
- ``finetune``: :func:`~.finetune.finetune` (supervised fine-tuning)
- ``evaluate``: metrics, tables, :func:`~.evaluate.evaluate_checkpoint`
- ``engine``, ``state``, ``distributed``: the epoch loop, resumable state, torchrun set-up
- ``config``: YAML run configurations; ``default_model``: the bundled model's recipe
- ``registry``: :func:`~.registry.use_trained_model` makes a checkpoint the user's default
"""
