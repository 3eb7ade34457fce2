"""The classifier folder ("umbif-classifier" v1): an encoder plus one linear head per task.

Written by ``umbif probe`` / ``umbif finetune``, read by ``umbif predict``::

    MODEL_DIR/
      encoder.safetensors, config.json    the encoder (umbif.models.io.save_encoder)
      heads.safetensors                   "<task>.weight" [F], "<task>.bias" [1], "<task>.mean" [F], "<task>.scale" [F]
      classifier.json                     format, method, embedding grid, preprocessing, tasks, provenance

A head scores ``sigmoid(((x - mean) / scale) @ weight + bias)`` where ``x`` is the encoder's CLS
embedding ``[E]`` of an exam (``inputs="exam"``, ``F = E``) or :func:`pair_array` of a baseline
and a follow-up exam (``inputs="pair"``, ``F = 3E``). Nothing in the folder is a pickle.

Example:
    >>> clf = load_classifier("runs/probe/classifier")            # doctest: +SKIP
    >>> clf.heads["idh"].head.score(embeddings)                    # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from scipy.special import expit

from umbif.config import PreprocessConfig
from umbif.models.io import (
    CONFIG_FILE,
    ENCODER_FILE,
    PICKLE_SUFFIXES,
    check_weights,
    load_encoder,
    read_safetensors,
    save_encoder,
)
from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.provenance import provenance as make_provenance
from umbif.utils import atomic_write, check_component, write_json

FORMAT = "umbif-classifier"
FORMAT_VERSION = 1
HEADS_FILE = "heads.safetensors"
CARD_FILE = "classifier.json"
METHODS: tuple[str, ...] = ("probe", "finetune")
INPUTS: tuple[str, ...] = ("exam", "pair")
TENSORS: tuple[str, ...] = ("weight", "bias", "mean", "scale")  # "<task>.<name>" in heads.safetensors


@dataclass
class SavedLinearHead:
    """A standardised linear score: ``logit(x) = ((x - mean) / scale) @ weight + bias``.

    The NumPy form a classifier folder stores and ``umbif predict`` scores with; the trainable torch
    heads are in ``umbif.models.heads``.

    Parameters are kept as float32 (what the folder stores), so a saved and reloaded head gives
    bit-identical scores; the arithmetic runs in float64.

    Args:
        weight: ``[F]`` coefficients on the standardised features.
        bias: the intercept.
        mean: ``[F]`` feature means (of the training embeddings).
        scale: ``[F]`` feature scales, all positive (a constant feature gets scale 1, as in scikit-learn).

    Example:
        >>> head = SavedLinearHead(np.ones(2), 0.0, np.zeros(2), np.ones(2))
        >>> head.score(np.array([[0.0, 0.0]]))
        array([0.5])
    """

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        self.weight, self.mean, self.scale = (
            np.asarray(a, dtype=np.float32).reshape(-1) for a in (self.weight, self.mean, self.scale)
        )
        self.bias = float(np.float32(self.bias))
        n = self.weight.size
        if n == 0 or self.mean.size != n or self.scale.size != n:
            raise ValueError(
                f"weight, mean and scale must have the same length F > 0, got "
                f"{self.weight.size}, {self.mean.size}, {self.scale.size}"
            )
        if not (np.isfinite(self.weight).all() and np.isfinite(self.mean).all() and np.isfinite(self.bias)):
            raise ValueError("weight, bias and mean must be finite")
        if not (np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise ValueError("scale must be finite and positive (use 1 for a constant feature)")

    @property
    def features(self) -> int:
        """``F``, the input width."""
        return int(self.weight.size)

    def logit(self, features: np.ndarray) -> np.ndarray:
        """``[N, F]`` -> ``[N]`` logits (float64)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"features must be [N, {self.features}], got {list(x.shape)}")
        return ((x - self.mean) / self.scale) @ self.weight.astype(np.float64) + self.bias

    def score(self, features: np.ndarray) -> np.ndarray:
        """``[N, F]`` -> ``[N]`` probabilities of the positive class (sigmoid of :meth:`logit`)."""
        return expit(self.logit(features))


@dataclass
class SavedTaskHead:
    """One task of a classifier: its head, what it reads, and how a score becomes a decision.

    Args:
        head: the :class:`SavedLinearHead`.
        inputs: ``"exam"`` (one exam's embedding) or ``"pair"`` (:func:`pair_array` of baseline
            and follow-up).
        threshold: decision threshold in ``[0, 1]``; positive when ``score >= threshold``.
        positive, negative: label text of the two classes (e.g. ``"mutant"``, ``"wildtype"``).
        n_train: training samples the head was fitted on.
        threshold_rule: how the threshold was chosen (e.g. ``"youden"``), for the record.
    """

    head: SavedLinearHead
    inputs: Literal["exam", "pair"]
    threshold: float
    positive: str
    negative: str
    n_train: int
    threshold_rule: str

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {self.inputs!r}")
        self.threshold = float(self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")

    def card(self) -> dict[str, Any]:
        """The task's entry in ``classifier.json``."""
        return {
            "kind": "linear",
            "inputs": self.inputs,
            "features": self.head.features,
            "threshold": self.threshold,
            "positive": self.positive,
            "negative": self.negative,
            "n_train": int(self.n_train),
            "threshold_rule": self.threshold_rule,
        }


@dataclass
class Classifier:
    """A loaded classifier folder (see :func:`load_classifier`).

    ``encoder`` is built on the stored ``image_size`` grid and in eval mode; ``model_config`` is that
    grid's config (``model_config.image_size == image_size``).
    """

    encoder: UMBIFEncoder
    model_config: ModelConfig
    heads: dict[str, SavedTaskHead]
    preprocess: PreprocessConfig
    image_size: tuple[int, int, int]
    method: str
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, present: torch.Tensor, batch_size: int = 16) -> np.ndarray:
        """CLS embeddings of exams: ``[B, S, X, Y, Z]``, ``[B, S]`` -> ``[B, E]`` float32, in batches."""
        device = next(self.encoder.parameters()).device
        out = [
            self.encoder(images[i : i + batch_size].to(device), present[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(out).numpy()


def pair_array(baseline: np.ndarray, followup: np.ndarray) -> np.ndarray:
    """Features of a (baseline, follow-up) pair: ``concat(b, f, f - b)``, ``[N, E]`` x2 -> ``[N, 3E]``.

    Example:
        >>> pair_array(np.array([[1.0]]), np.array([[3.0]]))
        array([[1., 3., 2.]])
    """
    b, f = np.asarray(baseline), np.asarray(followup)
    if b.ndim != 2 or b.shape != f.shape:
        raise ValueError(f"baseline and followup must both be [N, E], got {list(b.shape)} and {list(f.shape)}")
    return np.concatenate([b, f, f - b], axis=1)


def _grid_config(config: ModelConfig, image_size: tuple[int, int, int]) -> ModelConfig:
    """``config`` on another input grid (the position embeddings are fixed, so the weights fit any)."""
    return ModelConfig.model_validate({**config.to_dict(), "image_size": tuple(image_size)})


def _expected_features(inputs: str, dim: int) -> int:
    return dim if inputs == "exam" else 3 * dim


def save_classifier(
    out_dir: str | Path,
    encoder: UMBIFEncoder,
    model_config: ModelConfig,
    heads: dict[str, SavedTaskHead],
    preprocess: PreprocessConfig | dict[str, Any],
    image_size: tuple[int, int, int] | list[int],
    method: str,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a classifier folder: encoder, ``heads.safetensors`` and ``classifier.json``, each atomically.

    ``classifier.json`` is written last, so a folder interrupted mid-write has no (new) card.

    Args:
        out_dir: the folder (created).
        encoder: the encoder whose CLS embeddings the heads were fitted on.
        model_config: its architecture.
        heads: task name -> :class:`SavedTaskHead`; names must not contain ``"."``.
        preprocess: the preprocessing of the training cache (``PreprocessConfig`` or its dict).
        image_size: the grid the encoder was run on; must equal ``preprocess.shape``.
        method: ``"probe"`` or ``"finetune"``.
        provenance: what produced it (default: :func:`umbif.provenance.provenance`).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: no heads, a bad task name, a head width that does not fit the encoder width,
            an unknown method, or a grid that differs from the preprocessing's shape.

    Example:
        >>> save_classifier("runs/probe/classifier", encoder, config, {"idh": idh_head},
        ...                 PreprocessConfig(), (96, 96, 96), "probe")      # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    preprocess = preprocess if isinstance(preprocess, PreprocessConfig) else PreprocessConfig.model_validate(preprocess)
    image_size = tuple(int(n) for n in image_size)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if image_size != tuple(preprocess.shape):
        raise ValueError(
            f"image_size {list(image_size)} differs from the preprocessing shape {list(preprocess.shape)}; "
            "the encoder must be run on the cache grid so that predict can reproduce it"
        )
    _grid_config(model_config, image_size)  # raises when the grid is not a multiple of the patch size
    if not heads:
        raise ValueError("no task heads to save")
    tensors: dict[str, torch.Tensor] = {}
    for task, task_head in heads.items():
        check_task_name(task)
        expected = _expected_features(task_head.inputs, model_config.dim)
        if task_head.head.features != expected:
            raise ValueError(
                f"task {task}: head has {task_head.head.features} features, but inputs={task_head.inputs!r} on an "
                f"encoder of width {model_config.dim} give {expected}"
            )
        head = task_head.head
        tensors[f"{task}.weight"] = torch.from_numpy(head.weight.copy())
        tensors[f"{task}.bias"] = torch.tensor([head.bias], dtype=torch.float32)
        tensors[f"{task}.mean"] = torch.from_numpy(head.mean.copy())
        tensors[f"{task}.scale"] = torch.from_numpy(head.scale.copy())
    card = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "method": method,
        "embedding": {"image_size": list(image_size), "pool": "cls"},
        "preprocess": preprocess.to_dict(),
        "tasks": {task: task_head.card() for task, task_head in heads.items()},
        "provenance": provenance if provenance is not None else make_provenance(),
    }
    save_encoder(encoder, model_config, out_dir)
    with atomic_write(out_dir / HEADS_FILE) as handle:
        handle.write(safetensors_bytes(tensors, metadata={"format": "pt", "umbif_format": FORMAT}))
    write_json(out_dir / CARD_FILE, card)
    return out_dir


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Read and check a classifier folder written by :func:`save_classifier`; never unpickles.

    Args:
        path: the folder (``classifier.json``, ``heads.safetensors``, ``encoder.safetensors``, ``config.json``).
        device: where to put the encoder.

    Returns:
        a :class:`Classifier` whose encoder runs on the stored grid, in eval mode.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: a file is damaged or inconsistent (format/version, a missing or wrongly sized
            tensor, a threshold outside ``[0, 1]``, a pickle offered); the message names the file.

    Example:
        >>> clf = load_classifier("runs/probe/classifier")   # doctest: +SKIP
        >>> sorted(clf.heads)                                 # doctest: +SKIP
        ['idh', 'mgmt']
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: a pickle file; umbif reads classifiers only from a folder of safetensors and JSON files "
            "(loading a pickle can run any code it contains). Give the folder written by `umbif probe`/`finetune`"
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such classifier folder; give the folder written by `umbif probe` or `umbif finetune`"
        )
    for name in (CARD_FILE, HEADS_FILE, ENCODER_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            held = sorted(p.name for p in path.iterdir())[:20]
            pickles = [n for n in held if Path(n).suffix.lower() in PICKLE_SUFFIXES]
            if pickles:
                raise ValueError(
                    f"{path / name}: missing, and {pickles} are pickle files, which umbif never loads (they can run "
                    "any code); write the classifier with umbif.adapt.classifier.save_classifier"
                )
            raise FileNotFoundError(
                f"{path / name}: missing; a classifier folder holds {CARD_FILE}, {HEADS_FILE}, {ENCODER_FILE} and "
                f"{CONFIG_FILE} (this one holds {held}); write it again with `umbif probe` or `umbif finetune`"
            )
    card = _read_card(path / CARD_FILE)
    model_config = _read_model_config(path / CONFIG_FILE)
    image_size = tuple(card["embedding"]["image_size"])
    try:
        grid_config = _grid_config(model_config, image_size)
    except ValueError as err:
        raise ValueError(f"{path / CARD_FILE}: embedding.image_size does not fit the encoder ({err})") from None
    state, _ = read_safetensors(path / HEADS_FILE)
    check_weights(path / HEADS_FILE, state)
    heads = {
        task: _read_head(path / HEADS_FILE, task, spec, state, model_config.dim) for task, spec in card["tasks"].items()
    }
    try:
        encoder = load_encoder(path, device=device, config=grid_config)
    except ValueError as err:
        raise ValueError(f"{path / ENCODER_FILE}: {err}") from None
    return Classifier(
        encoder=encoder,
        model_config=grid_config,
        heads=heads,
        preprocess=card["preprocess"],
        image_size=image_size,  # type: ignore[arg-type]
        method=card["method"],
        provenance=card.get("provenance") or {},
        path=path,
    )


def _read_card(file: Path) -> dict[str, Any]:
    """``classifier.json``, checked field by field; ``preprocess`` comes back as a PreprocessConfig."""
    try:
        card = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err}); the file is damaged, write the classifier again") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise ValueError(f"{file}: not a classifier card (format {found!r}, expected {FORMAT!r})")
    if card.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{file}: format version {card.get('version')!r}; this umbif reads version {FORMAT_VERSION} "
            "(upgrade umbif or write the classifier again)"
        )
    if card.get("method") not in METHODS:
        raise ValueError(f"{file}: method {card.get('method')!r} is not one of {METHODS}")
    embedding = card.get("embedding")
    size = embedding.get("image_size") if isinstance(embedding, dict) else None
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(n, int) and n > 0 for n in size)):
        raise ValueError(f"{file}: embedding.image_size must be three positive integers, got {size!r}")
    if embedding.get("pool") != "cls":
        raise ValueError(f"{file}: embedding.pool {embedding.get('pool')!r} is not supported (only 'cls')")
    try:
        card["preprocess"] = PreprocessConfig.model_validate(card.get("preprocess"))
    except ValueError as err:
        raise ValueError(f"{file}: bad preprocess settings ({err})") from None
    if tuple(size) != tuple(card["preprocess"].shape):
        raise ValueError(f"{file}: embedding.image_size {size} differs from preprocess.shape")
    tasks = card.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{file}: no tasks")
    for task, spec in tasks.items():
        try:
            check_task_name(task)
        except ValueError as err:
            raise ValueError(f"{file}: {err}; a task name becomes part of output file names") from None
        _check_task_spec(file, task, spec)
    return card


def check_task_name(task: str) -> str:
    """``task`` if it can name files (``overlay_<task>.png``) and prefix tensors (``<task>.weight``): one safe
    path component (:func:`umbif.utils.check_component`) without ``.``; else ``ValueError``."""
    check_component(task, "task name")
    if "." in task:
        raise ValueError(f"task name {task!r} must hold no '.' (it prefixes tensor names)")
    return task


def _check_task_spec(file: Path, task: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{file}: task {task!r} must be an object")
    if spec.get("kind") != "linear":
        raise ValueError(f"{file}: task {task}: kind {spec.get('kind')!r} is not supported (only 'linear')")
    if spec.get("inputs") not in INPUTS:
        raise ValueError(f"{file}: task {task}: inputs {spec.get('inputs')!r} must be one of {INPUTS}")
    threshold = spec.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{file}: task {task}: threshold {threshold!r} must be a number in [0, 1]")
    for key in ("positive", "negative", "threshold_rule"):
        if not isinstance(spec.get(key), str):
            raise ValueError(f"{file}: task {task}: {key} must be a string, got {spec.get(key)!r}")
    for key in ("features", "n_train"):
        if isinstance(spec.get(key), bool) or not isinstance(spec.get(key), int) or spec[key] < 0:
            raise ValueError(f"{file}: task {task}: {key} must be a non-negative integer, got {spec.get(key)!r}")


def _read_model_config(file: Path) -> ModelConfig:
    try:
        data = json.loads(file.read_text())
        return ModelConfig.model_validate(data.get("model", data) if isinstance(data, dict) else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err}); the file is damaged, write the classifier again") from None
    except ValueError as err:
        raise ValueError(f"{file}: not a UMBIF model config ({err})") from None


def _read_head(file: Path, task: str, spec: dict[str, Any], state: dict[str, torch.Tensor], dim: int) -> SavedTaskHead:
    """One task's tensors from ``heads.safetensors``, checked against the card and the encoder width."""
    features = spec["features"]
    expected = _expected_features(spec["inputs"], dim)
    if features != expected:
        raise ValueError(
            f"{file.parent / CARD_FILE}: task {task} declares {features} features, but inputs={spec['inputs']!r} "
            f"on an encoder of width {dim} give {expected}"
        )
    values = {}
    for name in TENSORS:
        key = f"{task}.{name}"
        if key not in state:
            raise ValueError(f"{file}: tensor {key!r} is missing; write the classifier again")
        tensor = state[key]
        size = 1 if name == "bias" else features
        if tuple(tensor.shape) != (size,):
            raise ValueError(f"{file}: tensor {key!r} has shape {list(tensor.shape)}, expected [{size}]")
        values[name] = tensor.float().numpy()
    try:
        head = SavedLinearHead(values["weight"], float(values["bias"][0]), values["mean"], values["scale"])
    except ValueError as err:
        raise ValueError(f"{file}: task {task}: {err}") from None
    return SavedTaskHead(
        head=head,
        inputs=spec["inputs"],
        threshold=spec["threshold"],
        positive=spec["positive"],
        negative=spec["negative"],
        n_train=spec["n_train"],
        threshold_rule=spec["threshold_rule"],
    )
