"""Export and load the UMBIF encoder: ``encoder.safetensors`` + ``config.json``, never a pickle.

A folder written by :func:`save_encoder` is everything a downstream user needs::

    encoder = load_encoder("runs/pretrain/encoder")          # eval mode, on the CPU
    embedding = encoder(images, present)                      # [B, S, X, Y, Z], [B, S] -> [B, E]

:func:`load_state_tolerant` is the loader behind it (timm's ``checkpoint_filter_fn`` in spirit): it
strips wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``, ``backbone.``, ``encoder.``), names
every missing and unexpected key, and refuses a shape mismatch naming the layer.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.provenance import versions
from umbif.utils import atomic_write, json_text, write_json

ENCODER_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "umbif-encoder"  # written into both files so a reader can tell what it holds
FORMAT_VERSION = 1
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")  # DDP, torch.compile, wrappers
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
_SHOWN = 20  # names listed in a message before "... and N more"


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_state_tolerant` did: keys the module kept its own values for, keys ignored."""

    missing: list[str]  # module keys the state dict did not provide
    unexpected: list[str]  # state-dict keys (as given) that match nothing in the module


def save_encoder(
    encoder: UMBIFEncoder, config: ModelConfig, out_dir: str | Path, pretraining: Mapping[str, Any] | None = None
) -> Path:
    """Write ``encoder.safetensors`` and ``config.json`` (config, format, package versions) to ``out_dir``.

    Both files are written atomically; the config also travels in the safetensors metadata, so the
    weights file alone can be loaded. ``pretraining`` (e.g. ``{"crop": "tumour"}``: what the encoder saw)
    is kept in ``config.json`` for :func:`pretraining_of`. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    metadata = {"format": "pt", "umbif_format": FORMAT, "umbif_config": json_text(config.to_dict(), indent=None)}
    with atomic_write(out_dir / ENCODER_FILE) as handle:
        handle.write(safetensors_bytes(state, metadata=metadata))
    card = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": config.to_dict(), "versions": versions()}
    if pretraining:
        card["pretraining"] = dict(pretraining)
    write_json(out_dir / CONFIG_FILE, card)
    return out_dir


def pretraining_of(encoder_dir: str | Path) -> dict[str, Any]:
    """What an exported encoder's pretraining recorded about its inputs (``{}`` when nothing was, as for
    encoders exported before this was kept, or a bare weights file)."""
    config_file = Path(encoder_dir) / CONFIG_FILE
    if not config_file.is_file():
        return {}
    card = _parse_json(config_file.read_text(errors="replace"), str(config_file))
    return dict(card.get("pretraining", {})) if isinstance(card, dict) else {}


def load_encoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    strict: bool = True,
    config: ModelConfig | None = None,
    image_size: tuple[int, int, int] | None = None,
) -> UMBIFEncoder:
    """Load an encoder exported by :func:`save_encoder` (or any safetensors file of its weights).

    Args:
        path: the export folder, or a ``.safetensors`` file (its config is read from ``config.json``
            beside it, else from the file's metadata).
        device: where to put the encoder.
        strict: raise on missing or unexpected keys (False: warn, naming them, and keep going).
        config: use this architecture instead of the one stored with the weights (e.g. another
            ``image_size``: the position embeddings are fixed, so the weights fit any grid).
        image_size: run the stored architecture on this grid (e.g. the whole cached exam, when the
            encoder was pretrained on smaller crops); must be a multiple of the patch size.

    Returns:
        the encoder in eval mode; ``encoder(images, present)`` maps ``[B, S, X, Y, Z]`` and ``[B, S]``
        to exam embeddings ``[B, E]``.

    Example:
        >>> encoder = load_encoder("runs/pretrain/encoder")
    """
    path = Path(path)
    _refuse_pickle(path)
    if path.is_dir():
        weights = path / ENCODER_FILE
        if not weights.is_file():
            found = sorted(p.name for p in path.iterdir())[:_SHOWN]
            raise FileNotFoundError(
                f"{path}: no {ENCODER_FILE} in this folder (it holds {found}); "
                "export an encoder with umbif.models.save_encoder or pass the .safetensors file itself"
            )
    elif path.suffix == ".safetensors":
        weights = path
    else:
        raise ValueError(f"{path}: expected an encoder folder or a .safetensors file")
    state, metadata = read_safetensors(weights)
    check_weights(weights, state)
    config = config or _stored_config(weights, metadata)
    if image_size is not None:
        try:
            config = ModelConfig.model_validate({**config.to_dict(), "image_size": tuple(image_size)})
        except ValueError as err:
            raise ValueError(f"{path}: the encoder cannot run on the grid {tuple(image_size)} ({err})") from err
    encoder = UMBIFEncoder(config)
    load_state_tolerant(encoder, state, strict=strict)
    return encoder.to(device).eval()


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, on the CPU (nothing is unpickled)."""
    path = Path(path)
    _refuse_pickle(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    return state, metadata


def check_weights(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights that are not floating point or hold a NaN or an infinity, naming the file and the tensor.

    An integer tensor would be cast silently into a float parameter, and a non-finite weight turns every
    output into NaN, which must never become a prediction.
    """
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise ValueError(
                f"{path}: tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; weights must be "
                "floating point (float32, float16 or bfloat16). The file is not what umbif wrote: export it again"
            )
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(
                f"{path}: tensor {key!r} holds {bad} NaN or infinite value(s); these weights are damaged (a diverged "
                "training run?) and cannot give a prediction. Export or train them again"
            )


def load_state_tolerant(module: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Load ``state_dict`` into ``module``, forgiving wrapper prefixes, strict about everything else.

    A key that is not one of the module's loses leading ``module.``, ``_orig_mod.``, ``model.``,
    ``backbone.`` and ``encoder.`` parts until it is (``module.encoder.blocks.0.norm1.weight`` loads into
    an encoder's ``blocks.0.norm1.weight``); keys that still match nothing are unexpected.

    Args:
        module: the model to fill in place.
        state_dict: name -> tensor, e.g. from :func:`read_safetensors`.
        strict: raise ``ValueError`` naming the missing and unexpected keys; False warns instead.

    Returns:
        a :class:`LoadReport`.

    Raises:
        ValueError: a tensor's shape differs from the module's (always; the message names the layer
            and both shapes), two keys load into the same parameter, or ``strict`` and keys differ.
    """
    expected = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # mapped key -> key as given
    for key, value in state_dict.items():
        name = key
        while name not in expected and name.startswith(STRIP_PREFIXES):
            name = name.split(".", 1)[1]
        if name not in expected:
            name = key  # matches nothing: report it as given
        if name in mapped:
            raise ValueError(f"state-dict keys {source[name]!r} and {key!r} both load into {name!r}")
        mapped[name], source[name] = value, key

    mismatched = [
        f"{name!r}: checkpoint {list(value.shape)}, model {list(expected[name].shape)}"
        for name, value in mapped.items()
        if name in expected and value.shape != expected[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} layers have another shape than the model (is the config the one these "
            f"weights were trained with?): {name_listing(mismatched)}"
        )
    missing = [name for name in expected if name not in mapped]
    unexpected = [source[name] for name in mapped if name not in expected]
    if missing or unexpected:
        message = (
            f"{len(missing)} missing keys (kept at their initial values): {name_listing(missing)}; "
            f"{len(unexpected)} unexpected keys (ignored): {name_listing(unexpected)}"
        )
        if strict:
            raise ValueError(message + "; pass strict=False to load anyway")
        warnings.warn(message, stacklevel=2)
    module.load_state_dict({name: value for name, value in mapped.items() if name in expected}, strict=False)
    return LoadReport(missing=missing, unexpected=unexpected)


def name_listing(names: list[str]) -> str:
    """``names`` (state-dict keys) for a message: the first ``_SHOWN`` listed, the rest counted by their
    first two name parts; "none" when there are none."""
    if not names:
        return "none"
    rest = Counter(".".join(name.split(".")[:2]) + ".*" for name in names[_SHOWN:])
    more = f", ... and {len(names) - _SHOWN} more ({', '.join(f'{k}: {n}' for k, n in rest.items())})" if rest else ""
    return ", ".join(names[:_SHOWN]) + more


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: umbif loads weights only from .safetensors files and never unpickles, because loading "
            "a pickled .pt/.pth/.ckpt file can run any code it contains. If you trust the file, convert it "
            "once (if it holds a dict with a 'model' or 'state_dict' entry, save that entry):\n"
            '  python -c "import torch, safetensors.torch as st; '
            f"sd = torch.load('{path}', map_location='cpu', weights_only=True); "
            "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'encoder.safetensors')\""
        )


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON ({error}); the file is damaged, export the encoder again") from None


def _stored_config(weights: Path, metadata: dict[str, str]) -> ModelConfig:
    config_file = weights.parent / CONFIG_FILE
    if config_file.is_file():
        text, source = config_file.read_text(errors="replace"), str(config_file)
    elif "umbif_config" in metadata:
        text, source = metadata["umbif_config"], f"{weights} (metadata)"
    else:
        raise FileNotFoundError(
            f"{weights}: no {CONFIG_FILE} beside it and no umbif_config in its metadata; "
            "pass config=ModelConfig(...) with the architecture the weights were trained with"
        )
    data = _parse_json(text, source)
    data = data.get("model", data) if isinstance(data, dict) else data
    try:
        return ModelConfig.model_validate(data)
    except ValueError as error:
        raise ValueError(f"{source}: not a UMBIF model config ({error})") from error
