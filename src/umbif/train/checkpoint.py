"""Training checkpoints that resume exactly: safetensors for tensors, JSON for the rest; nothing is unpickled.

Layout of a run folder::

    RUN/checkpoints/
        step_000123/
            model.safetensors      the model's state dict (tied tensors stored once)
            optimizer.safetensors  optimiser state tensors named state.<param index>.<key>, e.g. state.0.exp_avg
            rng.safetensors        torch CPU and CUDA RNG states, named torch.Generator states (uint8)
            state.json             step, config, extra, provenance, optimiser param groups and scalar state,
                                   scheduler and AMP grad-scaler states, Python and NumPy RNG states
        latest                     the name of the newest checkpoint folder, written last

A checkpoint folder is written under a temporary name and renamed into place, so a folder called
``step_*`` is always complete; ``latest`` is replaced atomically after the rename. A crash at any
moment leaves the previous checkpoint usable. A checkpoint damaged afterwards (a file truncated by a
full disk or an interrupted copy) is passed over, with a warning, for the previous intact one; a
``latest`` that names anything but a ``step_*`` folder of the run is refused. ``state.json`` is strict
JSON: a NaN or an infinity in a state (ReduceLROnPlateau's ``best``) is stored as ``{"__float__": "inf"}``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import secrets
import shutil
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from umbif.provenance import provenance
from umbif.utils import inside, json_text, remove_stale_temps, write_text_atomic

CHECKPOINTS = "checkpoints"  # folder inside a run folder
LATEST = "latest"  # pointer file inside CHECKPOINTS
FORMAT = "umbif-checkpoint"
FORMAT_VERSION = 1
# config keys that may change between a checkpoint and its resumption (matched on any part of a dotted key)
DEFAULT_IGNORE = ("epochs", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "num_workers", "resume")
_STEP_DIR = re.compile(r"step_([0-9]+)")  # a checkpoint folder's name (fullmatch)
_NON_FINITE = "__float__"  # state.json stores a NaN or an infinity as {"__float__": "inf"}: strict JSON has none


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model, optimiser or config it is loaded into."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


# --- RNG states --------------------------------------------------------------------------------------


def capture_rng_states(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device) and of
    the named ``torch.Generator`` objects, e.g. ``{"augment": generator}``."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_states(states: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Set the generators back to ``states`` (as returned by :func:`capture_rng_states`). CUDA states are
    restored when the machine has the same number of devices, and skipped otherwise (e.g. on a CPU)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(states["cuda"]):
        torch.cuda.set_rng_state_all(states["cuda"])
    missing = sorted(set(generators or {}) - set(states["generators"]))
    if missing:
        raise CheckpointError(f"the checkpoint has no state for the generators {missing}")
    for name, generator in (generators or {}).items():
        generator.set_state(states["generators"][name])


def _rng_split(states: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    version, internal, gauss = states["python"]
    name, keys, pos, has_gauss, cached = states["numpy"]
    tensors = {"torch": states["torch"]}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(states["cuda"])})
    tensors.update({f"generator.{n}": s for n, s in states["generators"].items()})
    info = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "cuda_devices": len(states["cuda"]),
        "generators": sorted(states["generators"]),
    }
    return tensors, info


def _rng_join(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = info["numpy"]
    return {
        "python": info["python"],
        "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        "torch": tensors["torch"],
        "cuda": [tensors[f"cuda.{i}"] for i in range(info["cuda_devices"])],
        "generators": {n: tensors[f"generator.{n}"] for n in info["generators"]},
    }


# --- optimiser state -----------------------------------------------------------------------------------


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors as ``state.<index>.<key>``; param groups and non-tensor state as JSON."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        scalars[str(index)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[str(index)][key] = value
    info = {"class": type(optimizer).__name__, "param_groups": state_dict["param_groups"], "state": scalars}
    return tensors, info


def _optimizer_join(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(index): dict(entry) for index, entry in info["state"].items()}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    groups = []
    for saved, current in zip(info["param_groups"], optimizer.param_groups, strict=False):
        # JSON has no tuples: give back the current group's tuples (AdamW's betas) their type
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
    groups += info["param_groups"][len(groups) :]  # a count mismatch is reported by load_state_dict
    return {"state": state, "param_groups": groups}


# --- config compatibility --------------------------------------------------------------------------------


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def check_compatible(
    saved_config: Mapping[str, Any], config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORE
) -> None:
    """Raise :class:`CheckpointError` naming every key (dotted for nested configs) whose value differs
    between a checkpoint's config and the current one. A key is ignored when it, or any part of its
    dotted name, is in ``ignore`` (e.g. ``total_steps``: a run may be extended)."""
    ignored = set(ignore)
    saved = _flatten(saved_config)
    current = _flatten(json.loads(json.dumps(config)))  # the JSON round trip the saved config went through
    differing = []
    for key in sorted(saved.keys() | current.keys()):
        if key in ignored or ignored & set(key.split(".")):
            continue
        if key not in current:
            differing.append(f"{key} (saved {saved[key]!r}, now absent)")
        elif key not in saved:
            differing.append(f"{key} (absent in the checkpoint, now {current[key]!r})")
        elif saved[key] != current[key]:
            differing.append(f"{key} (saved {saved[key]!r}, now {current[key]!r})")
    if differing:
        raise CheckpointError(
            f"the checkpoint was made with a different config: {'; '.join(differing)}. "
            "Resume with the saved config (state.json), or start a new run folder."
        )


# --- saving -----------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_text(value: Any, what: str) -> str:
    def refuse(obj: Any) -> Any:
        raise TypeError(f"{what} holds a {type(obj).__name__}, which a checkpoint's JSON cannot store")

    return json_text(_tag_non_finite(value), indent=1, default=refuse) + "\n"


def _tag_non_finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``{"__float__": "inf"}`` (ReduceLROnPlateau starts at inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_NON_FINITE: repr(value)}
    if isinstance(value, Mapping):
        return {key: _tag_non_finite(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tag_non_finite(v) for v in value]
    return value


def _untag_non_finite(value: Any) -> Any:
    """The inverse of :func:`_tag_non_finite`."""
    if isinstance(value, dict):
        if value.keys() == {_NON_FINITE}:
            return float(value[_NON_FINITE])
        return {key: _untag_non_finite(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_untag_non_finite(v) for v in value]
    return value


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under ``root``, oldest step first."""
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := _STEP_DIR.fullmatch(p.name))]
    return sorted((step, p) for step, p in found if (p / "state.json").is_file())


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint held in CPU memory, taken by :func:`capture_checkpoint`, put on disk by :func:`write_checkpoint`."""

    step: int
    model: dict[str, torch.Tensor]  # CPU copies of the state dict; tied tensors share one copy
    optimizer: dict[str, torch.Tensor] | None  # optimiser state tensors (state.<index>.<key>)
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]  # state.json, less its provenance (added when written)


class _Weights(nn.Module):
    """A state dict dressed as a module, for ``safetensors.torch.save_model`` (which stores tied tensors once)."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.weights = weights

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return dict(self.weights)


def _cpu_copies(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies (never the live tensors, even on the CPU); names that view the same memory (tied
    weights) share one copy, so that the saved file still stores them once."""
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    out = {}
    for name, tensor in tensors.items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=True).contiguous()
        out[name] = copies[key]
    return out


def capture_checkpoint(
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> Snapshot:
    """Copy everything a checkpoint holds into CPU memory, as it is now: call it on the training thread between
    two steps; training may go on at once while :func:`write_checkpoint` writes the copy (in another thread).
    Arguments as in :func:`save_checkpoint`."""
    optimizer_tensors, optimizer_info = _optimizer_split(optimizer) if optimizer is not None else (None, None)
    rng_tensors, rng_info = _rng_split(capture_rng_states(generators))
    state: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "config": copy.deepcopy(config),
        "extra": copy.deepcopy(dict(extra or {})),
        "optimizer": copy.deepcopy(optimizer_info),
        "scheduler": copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": copy.deepcopy(scaler.state_dict()) if scaler is not None else None,
        "rng": rng_info,
    }
    return Snapshot(
        step=step,
        model=_cpu_copies(unwrap(model).state_dict()),
        optimizer=optimizer_tensors,
        rng={k: v.contiguous() for k, v in rng_tensors.items()},
        state=state,
    )


def write_checkpoint(run_dir: str | Path, snapshot: Snapshot, keep: int | None = 3) -> Path:
    """Write ``RUN/checkpoints/step_<step>/`` from a :class:`Snapshot` atomically, point ``latest`` at it, keep the
    newest ``keep`` (see :func:`save_checkpoint`). Safe to run in a background thread while training goes on.

    Returns:
        The checkpoint folder.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep}")
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    remove_stale_temps(root / LATEST)

    step = snapshot.step
    name = f"step_{step:06d}"
    state = {**snapshot.state, "provenance": provenance()}
    tmp = root / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_model(_Weights(snapshot.model), str(tmp / "model.safetensors"), force_contiguous=True)
        if snapshot.optimizer is not None:
            save_file(snapshot.optimizer, str(tmp / "optimizer.safetensors"))
        save_file(snapshot.rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(_json_text(state, "the checkpoint state (config, extra or scheduler)"))
        for path in [*tmp.iterdir(), tmp]:
            _fsync(path)
        final = root / name
        if final.exists():  # the same step saved again (after resuming from an earlier checkpoint)
            old = root / f".{name}.old-{secrets.token_hex(4)}.tmp"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, name + "\n")

    if keep is not None:
        older = [p for s, p in _step_dirs(root) if s <= step]
        for path in older[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    keep: int | None = 3,
) -> Path:
    """Write ``RUN/checkpoints/step_<step>/`` atomically, point ``latest`` at it, keep the newest ``keep``:
    :func:`capture_checkpoint` then :func:`write_checkpoint`, on this thread.

    Call it on the main rank only, after ``step`` optimiser steps. The global RNG states of this process
    and the named generators are saved as they are at the call.

    Args:
        run_dir: the run folder.
        step: optimiser steps done so far; names the folder.
        model: the model (DDP and ``torch.compile`` wrappers are unwrapped).
        optimizer, scheduler: saved when given.
        scaler: the AMP ``GradScaler`` of float16 training (its loss scale is part of the state).
        config: the resolved run config (JSON-serialisable); :func:`load_checkpoint` compares it.
        extra: anything else JSON-serialisable the loop needs to resume: epoch, position in the epoch,
            the data fingerprint.
        generators: named generators whose state is saved, e.g. ``{"augment": generator}``.
        keep: how many checkpoints to keep (older ones are deleted); ``None`` keeps all. Folders of later
            steps (from a run that was resumed from an earlier checkpoint) are left alone.

    Returns:
        The checkpoint folder.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep}")
    snapshot = capture_checkpoint(step, model, optimizer, scheduler, scaler=scaler, config=config, extra=extra,
                                  generators=generators)  # fmt: skip
    return write_checkpoint(run_dir, snapshot, keep)


# --- loading ----------------------------------------------------------------------------------------------


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run resumes from: the folder ``latest`` names, or the newest complete one when
    ``latest`` is missing or dangling; ``None`` when the run has none. Accepts a run folder or its
    ``checkpoints`` folder.

    A checkpoint with a truncated or unreadable file is passed over for the previous intact one, with a
    warning naming the damage.

    Raises:
        CheckpointError: ``latest`` names something other than a ``step_*`` folder of this run (it could
            point at another run's weights), a checkpoint folder leads outside the run, or every
            checkpoint is damaged.
    """
    root = Path(run_dir)
    if (root / CHECKPOINTS).is_dir():
        root = root / CHECKPOINTS
    newest_first = [path for _, path in reversed(_step_dirs(root))]
    named = _pointer_target(root)
    if named is not None and (named / "state.json").is_file():
        step = int(_STEP_DIR.fullmatch(named.name).group(1))  # type: ignore[union-attr]
        newest_first = [named, *(p for s, p in reversed(_step_dirs(root)) if s < step)]
    damaged = []
    for path in newest_first:
        try:
            inside(root, path)
        except ValueError as err:
            raise CheckpointError(f"{path} is a link out of the run folder {root}; {err}") from None
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                warnings.warn(
                    f"{'; '.join(damaged)}: passed over, using {path.name} (the newest intact checkpoint) instead",
                    stacklevel=2,
                )
            return path
        damaged.append(problem)
    if damaged:
        raise CheckpointError(f"every checkpoint in {root} is damaged: {'; '.join(damaged)}; start a new run folder")
    return None


def _pointer_target(root: Path) -> Path | None:
    """The folder ``latest`` names (None without a pointer); refused unless it is a ``step_*`` name."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    if not _STEP_DIR.fullmatch(name):
        raise CheckpointError(
            f"{pointer} names {name[:200]!r}, not a checkpoint folder of this run (step_NNNNNN); it was not written "
            f"by umbif. Delete {pointer} to use the newest checkpoint in {root}"
        )
    return root / name


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a checkpoint folder cannot be loaded (a damaged ``state.json``, a missing or truncated weights file),
    or None when it is intact. Only file headers are read: cheap even for large checkpoints."""
    folder = Path(folder)
    try:
        state = read_state(folder)
    except CheckpointError as err:
        return str(err)
    names = ["model.safetensors", "rng.safetensors"] + (["optimizer.safetensors"] if state.get("optimizer") else [])
    for name in names:
        try:
            with safe_open(folder / name, framework="pt", device="cpu"):
                pass
        except (OSError, SafetensorError) as err:  # missing, or shorter than its header says (truncated)
            return f"{folder / name} is unreadable ({err})"
    return None


def read_state(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, checked to be one umbif wrote (format and version)."""
    file = Path(folder) / "state.json"
    try:
        state = _untag_non_finite(json.loads(file.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is unreadable ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
        found = (state.get("format"), state.get("format_version")) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{file}: not a {FORMAT} version {FORMAT_VERSION} checkpoint (found {found!r})")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the one :func:`latest_checkpoint` finds in a run folder."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected a checkpoint folder (with state.json) or a run folder "
            f"with {CHECKPOINTS}/step_*/; start the run without --resume"
        )
    return found


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    config: Mapping[str, Any] | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` (and ``optimizer``, ``scheduler``, ``scaler``, the global RNGs and
    the named ``generators``) so that training continues exactly as if it had not stopped.

    Args:
        path: a checkpoint folder, or a run folder (its latest checkpoint is used).
        model, optimizer, scheduler, scaler: built as for a fresh run; loaded in place.
        generators: named generators to restore, the names used when saving.
        config: the current run config; when given, it must match the saved one (:func:`check_compatible`)
            except for the keys in ``ignore``; checked before anything is loaded.
        restore_rng: set False where the RNG states must not be shared, e.g. on ranks other than 0
            (reseed them with ``seed_everything``).

    Returns:
        The checkpoint's ``state.json`` (``step``, ``config``, ``extra``, ``provenance``, ...) plus ``path``.
    """
    folder = resolve_checkpoint(path)
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(
            f"{problem}; load an earlier checkpoint folder, or the run folder to take the newest intact one"
        )
    state = read_state(folder)
    if config is not None and state["config"] is not None:
        check_compatible(state["config"], config, ignore)

    try:
        missing, unexpected = load_model(unwrap(model), str(folder / "model.safetensors"), strict=False)
    except RuntimeError as error:  # tensor shapes differ
        raise CheckpointError(f"{folder / 'model.safetensors'} does not fit the model: {error}") from error
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / 'model.safetensors'} does not fit the model: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
    weights = unwrap(model).state_dict()
    non_finite = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise CheckpointError(
            f"{folder / 'model.safetensors'}: tensors {non_finite[:10]} hold NaN or infinite values; the run diverged "
            "before this checkpoint. Load an earlier checkpoint folder"
        )
    if optimizer is not None:
        if state["optimizer"] is None:
            raise CheckpointError(f"{folder} has no optimiser state")
        if state["optimizer"]["class"] != type(optimizer).__name__:
            raise CheckpointError(
                f"{folder} holds {state['optimizer']['class']} state, the run uses {type(optimizer).__name__}"
            )
        tensors = load_file(str(folder / "optimizer.safetensors"))
        optimizer.load_state_dict(_optimizer_join(optimizer, tensors, state["optimizer"]))
    if scheduler is not None:
        if state["scheduler"] is None:
            raise CheckpointError(f"{folder} has no scheduler state")
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None:
        if state["scaler"] is None:
            raise CheckpointError(f"{folder} has no grad-scaler state")
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        restore_rng_states(_rng_join(load_file(str(folder / "rng.safetensors")), state["rng"]), generators)
    del state["rng"]  # internal: restored above
    state["path"] = str(folder)
    return state
