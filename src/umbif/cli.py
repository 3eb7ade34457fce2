"""The ``umbif`` command line: the app, assembled from the command modules of :mod:`umbif.commands`.

Each command parses its options and calls one library function; heavy modules are imported inside
the commands, so ``--help`` stays fast. This module only decides names and order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from umbif import __version__
from umbif.commands import adapt, cache, demo, evaluate, ingest, manifest, predict, pretrain, synth
from umbif.commands.common import out

# Every command in `umbif --help` order: the data path, the model, then what uses the model.
COMMANDS: dict[str, typer.Typer | Callable[..., None]] = {
    "ingest": ingest.app,
    "manifest": manifest.app,
    "preprocess": cache.preprocess,
    "cache": cache.app,
    "synth": synth.synth,
    "pretrain": pretrain.pretrain,
    "export": pretrain.export,
    "embed": adapt.embed,
    "probe": adapt.probe,
    "finetune": adapt.finetune,
    "evaluate": evaluate.evaluate,
    "benchmark": evaluate.benchmark,
    "report": evaluate.report,
    "predict": predict.predict,
    "demo": demo.demo,
}


class _InOrder(TyperGroup):
    """Lists the commands in the order of :data:`COMMANDS` (Typer would list the sub-apps last)."""

    def list_commands(self, ctx: Any) -> list[str]:
        order = list(COMMANDS)
        return sorted(self.commands, key=lambda name: order.index(name) if name in order else len(order))


app = typer.Typer(
    name="umbif",
    cls=_InOrder,
    help=(
        "UMBIF: build and use a brain-MRI foundation model from your own routine scans.\n\n"
        "Data path: `umbif ingest` (files -> manifest), `umbif manifest validate|summary`, "
        "`umbif preprocess` (manifest -> fast exam cache), `umbif cache info|show`. "
        "No data yet? `umbif synth` writes a synthetic multi-site glioma archive.\n\n"
        "Model: `umbif pretrain` (hybrid self-supervised pretraining; torchrun for several GPUs), "
        "`umbif export` (the encoder alone, for `umbif.load_encoder`)."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"umbif {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """UMBIF command line."""


for _name, _command in COMMANDS.items():
    if isinstance(_command, typer.Typer):
        app.add_typer(_command, name=_name)
    else:
        app.command(_name)(_command)
