"""3D CNN baselines trained from scratch: MONAI's ResNet18 and DenseNet121 on the cached exams.

The same inputs, folds, labels and training loop as UMBIF fine-tuning, only the backbone differs:

- **Input.** The cache's four z-scored sequences (T1, T1c, T2, FLAIR) as channels, resampled (trilinear) from
  the cache grid to ``input_size`` when one is set, to fit CPU budgets. Absent sequences are zero channels,
  whatever the input holds. The presence mask is not appended as extra channels: a zero channel is already
  unmistakable (a present sequence is z-scored, unit variance inside the brain), and extra constant channels
  would only widen the first convolution.
- **Network.** ``monai.networks.nets.resnet18`` (stem stride 2 as in He et al.'s ResNet: MONAI's default stride 1
  runs the 7^3 stem at full resolution, a training step measured ~5x slower at 32^3) or ``DenseNet121``, both
  with global average pooling and no classifier: a feature vector per exam (512 or 1024 at ``width`` 1).
- **Heads.** :class:`CNNEncoder` gives :class:`umbif.models.heads.MultiTaskModel` one token per exam, its
  features, so the multi-task linear heads, the masked labels and the pairs are UMBIF's: the outcome head sees
  ``concat(b, f, f - b)`` (``heads.pair_features``) of the baseline and follow-up, embedded with shared weights.
- **Training.** :func:`umbif.train.supervised.fit_multitask`: inner patient split, early stopping, Youden
  thresholds on the inner validation split (training data only), AdamW with warm-up and cosine decay, one
  learning rate for every layer (nothing is pretrained).

Example::

    method = CNNMethod("cache/", CNNConfig(architecture="resnet18", input_size=48, epochs=10))
    run_method(method, cohort.samples, splits, Path("run/"), settings=method.settings)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from umbif.data.cache import Cache
from umbif.data.samples import PAIRED_TASKS, check_task
from umbif.models.heads import MultiTaskModel, TaskHead
from umbif.train.supervised import TrainConfig, TrainedModel, fit_and_predict, fit_multitask, param_groups

ARCHITECTURES: tuple[str, ...] = ("resnet18", "densenet121")
NAMES = {"resnet18": "ResNet18", "densenet121": "DenseNet121"}
# Smallest input edge: ResNet18 halves with ceil (any edge works; below 8 its last blocks see one voxel);
# DenseNet121's three 2x average-pool transitions after a 4x stem need 29 voxels to leave one.
MIN_INPUT = {"resnet18": 8, "densenet121": 29}


class CNNConfig(TrainConfig):
    """A CNN baseline: the network, its input grid, and the training loop's settings (:class:`TrainConfig`).

    Example:
        >>> CNNConfig(architecture="densenet121", input_size=48).input_shape((64, 64, 64))
        (48, 48, 48)
    """

    architecture: Literal["resnet18", "densenet121"] = "resnet18"  # MONAI network, trained from scratch
    input_size: int | tuple[int, int, int] | None = None  # edge (or shape) the cache grid is resampled to; None: as is
    width: float = 1.0  # channel multiplier (ResNet widen_factor; DenseNet init features and growth rate); 1 = standard
    lr: float = 1e-3  # peak learning rate, every layer alike: nothing pretrained to protect
    # from scratch the validation loss often rises for several epochs before it falls (batch-norm running
    # statistics lag the weights): on the synthetic cohort the best epoch stayed 1 until epoch 14
    patience: int = 10

    @model_validator(mode="after")
    def _check_cnn(self) -> CNNConfig:
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: batch norm needs two exams per step")
        if not 0.0 < self.width <= 4.0:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if self.input_size is not None:
            self.input_shape((1, 1, 1))  # raises for an edge the network cannot take
        return self

    def input_shape(self, grid: Sequence[int]) -> tuple[int, int, int]:
        """The network's input shape for a cache ``grid``: ``input_size`` (an edge means a cube), else ``grid``.

        Raises:
            ValueError: an edge smaller than the architecture takes (:data:`MIN_INPUT`).
        """
        size = self.input_size if self.input_size is not None else tuple(grid)
        shape = (size, size, size) if isinstance(size, int) else tuple(int(n) for n in size)
        least = MIN_INPUT[self.architecture]
        if len(shape) != 3 or min(shape) < least:
            raise ValueError(
                f"{self.architecture} needs an input of at least {least}^3 voxels, got {shape}; "
                "raise input_size (or use a larger cache grid)"
            )
        return shape  # type: ignore[return-value]


def build_network(architecture: str, width: float = 1.0) -> tuple[nn.Module, int]:
    """A MONAI 3D network on 4 channels that returns pooled features ``[B, F]`` (no classifier), and ``F``.

    Example:
        >>> net, dim = build_network("resnet18", width=0.5)
        >>> net(torch.zeros(2, 4, 16, 16, 16)).shape, dim
        (torch.Size([2, 256]), 256)
    """
    from monai.networks.nets import DenseNet121, resnet18  # importing monai takes seconds: only when building

    if architecture == "resnet18":
        net = resnet18(spatial_dims=3, n_input_channels=4, conv1_t_stride=2, widen_factor=width, feed_forward=False)
        return net, int(512 * width)
    if architecture == "densenet121":
        init, growth = max(1, round(64 * width)), max(1, round(32 * width))
        net = DenseNet121(spatial_dims=3, in_channels=4, out_channels=1, init_features=init, growth_rate=growth)
        dim = net.class_layers.out.in_features
        net.class_layers.out = nn.Identity()  # keep ReLU, global average pooling and flatten
        return net, dim
    raise ValueError(f"unknown architecture {architecture!r}; choose {', '.join(ARCHITECTURES)}")


class CNNEncoder(nn.Module):
    """A 3D CNN as a one-token encoder for :class:`umbif.models.heads.MultiTaskModel`.

    ``[B, S, X, Y, Z]`` (absent sequences zeroed, then resampled to ``input_shape``) -> ``tokens``
    ``[B, 1, F]`` (the pooled features) and ``token_mask`` ``[B, 1]`` (all True).

    Args:
        architecture: "resnet18" or "densenet121".
        input_shape: the grid the network sees; other grids are resampled to it (trilinear).
        width: channel multiplier.

    Example:
        >>> encoder = CNNEncoder("resnet18", (16, 16, 16), width=0.25).eval()
        >>> encoder(torch.randn(2, 4, 32, 32, 32), torch.ones(2, 4, dtype=torch.bool)).shape
        torch.Size([2, 128])
    """

    def __init__(self, architecture: str, input_shape: tuple[int, int, int], width: float = 1.0):
        super().__init__()
        self.architecture = architecture
        self.input_shape = tuple(input_shape)
        self.net, self.dim = build_network(architecture, width)

    def forward_tokens(self, images: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``[B, S, X, Y, Z]``, ``present`` ``[B, S]`` -> ``tokens`` ``[B, 1, F]``, ``token_mask``
        ``[B, 1]``."""
        if images.ndim != 5 or tuple(present.shape) != tuple(images.shape[:2]):
            raise ValueError(f"expected images [B, S, X, Y, Z] and present [B, S], got {list(images.shape)}")
        x = images * present[:, :, None, None, None].to(images.dtype)  # absent sequences are zero channels
        if tuple(x.shape[2:]) != self.input_shape:
            x = F.interpolate(x, size=self.input_shape, mode="trilinear", align_corners=False)
        features = self.net(x)  # [B, F]
        return features[:, None], torch.ones(features.shape[0], 1, dtype=torch.bool, device=features.device)

    forward_features = forward_tokens  # timm's name

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F]`` -> ``[B, F]``."""
        return tokens[:, 0]

    def forward(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Exam features ``[B, F]``."""
        return self.forward_head(self.forward_tokens(images, present)[0])

    def no_weight_decay(self) -> set[str]:
        return set()  # biases and norms are left out by param_groups already


def build_cnn(tasks: Sequence[str], grid: Sequence[int], config: CNNConfig) -> MultiTaskModel:
    """The CNN with one linear head per task (a pair head for the paired tasks), for a cache ``grid``.

    Example:
        >>> model = build_cnn(("idh", "outcome"), (32, 32, 32), CNNConfig(width=0.25))
        >>> model(images, present, paired, baseline_images, baseline_present).shape  # [B, 2]
    """
    encoder = CNNEncoder(config.architecture, config.input_shape(grid), config.width)
    heads = {check_task(task): TaskHead(encoder.dim, "linear", task in PAIRED_TASKS) for task in tasks}
    return MultiTaskModel(encoder, heads, mode="full")


def train_cnn(
    cache: Cache | str | Path,
    train: Mapping[str, pd.DataFrame],
    config: CNNConfig | None = None,
    device: str | torch.device | None = None,
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
    exclude_patients: Sequence[str] = (),
) -> TrainedModel:
    """Train the CNN from scratch on ``train`` (:func:`umbif.train.supervised.fit_multitask`).

    Args:
        cache: the exam cache (a :class:`umbif.data.cache.Cache` or its folder).
        train: task -> labelled sample table (``umbif.data.samples.SAMPLE_COLUMNS``).
        config: settings (default :class:`CNNConfig`).
        device: default CUDA when available, else CPU.
        on_epoch: called after each epoch with ``(epoch, max_epochs, record)``.
        exclude_patients: patients left out of training (a test fold's).

    Returns:
        :class:`umbif.train.supervised.TrainedModel` (``model_config`` None); score it with
        ``umbif.train.supervised.predict``.

    Example:
        >>> result = train_cnn("cache/", {"idh": table}, CNNConfig(input_size=32, epochs=10))
        >>> result.thresholds["idh"], result.best_epoch
    """
    settings = config or CNNConfig()

    def build(tasks: tuple[str, ...], grid: tuple[int, int, int]) -> MultiTaskModel:
        return build_cnn(tasks, grid, settings)

    def groups(model: MultiTaskModel) -> list[dict[str, Any]]:
        return param_groups(model, settings.lr, 1.0, settings.weight_decay)  # one layer: no layer-wise decay

    return fit_multitask(build, groups, cache, train, settings, device, on_epoch, exclude_patients)


class CNNMethod:
    """A CNN trained from scratch per fold, multi-task (an ``umbif.eval.evaluate`` method).

    Args:
        cache: the exam cache the samples' exams are in (a :class:`umbif.data.cache.Cache` or its folder).
        config: settings (default :class:`CNNConfig`).
        name: the method's name; default ``cnn-<architecture>``.
        device: default CUDA when available, else CPU.

    Example:
        >>> method = CNNMethod("cache/", CNNConfig(architecture="densenet121"))
        >>> method.name
        'cnn-densenet121'
    """

    def __init__(
        self,
        cache: Cache | str | Path,
        config: CNNConfig | None = None,
        name: str | None = None,
        device: str | torch.device | None = None,
    ):
        self.cache = cache if isinstance(cache, Cache) else Cache(cache)
        self.config = config or CNNConfig()
        self.device = device
        self.name = name or f"cnn-{self.config.architecture}"
        size = self.config.input_size
        grid = "the cache grid" if size is None else f"{size}^3" if isinstance(size, int) else "x".join(map(str, size))
        self.description = (
            f"MONAI 3D {NAMES[self.config.architecture]} trained from scratch on the 4 sequences ({grid}), "
            "multi-task linear heads, early stopping on an inner patient split"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What to save with the predictions (``run_method(settings=...)``)."""
        return self.config.to_dict()

    def fit_predict(
        self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]
    ) -> dict[str, tuple[np.ndarray, float]]:
        """Train on ``train`` (test patients left out), score ``test``; thresholds from the training data only."""

        def fit(excluded: list[str]) -> TrainedModel:
            return train_cnn(self.cache, train, self.config, self.device, exclude_patients=excluded)

        return fit_and_predict(fit, self.cache, train, test, self.device)
