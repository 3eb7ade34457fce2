"""The package's structure, checked from its source (AST): layers import downwards only, no import
cycle, the evaluation harness knows no method, no private name crosses a module, the cache's file
layout stays inside ``umbif.data``, and no source file grows past ~600 lines (docs/architecture.md)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "umbif"

# The layers, bottom to top: a module may import its own layer and the ones below, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("umbif", "umbif.utils", "umbif.provenance", "umbif.config", "umbif.metrics", "umbif.viz"),  # base
    ("umbif.data",),  # files -> manifest -> cache -> samples
    ("umbif.models",),  # UMBIF, heads, blocks, safetensors I/O
    ("umbif.train",),  # pretraining, the supervised loop, checkpoints, DDP
    ("umbif.adapt",),  # embeddings, linear probe, fine-tuning, classifier folders
    ("umbif.baselines",),  # radiomics, CNNs, SSL-ImageNet, SSL-Cerebral
    ("umbif.eval",),  # splits, harness, method registry, metrics document, report
    ("umbif.predict", "umbif.demo"),  # applications of everything below
    ("umbif.commands", "umbif.cli", "umbif.__main__"),  # the command line
)
HARNESS = (
    "umbif.eval.evaluate",
    "umbif.eval.splits",
    "umbif.eval.summary",
    "umbif.eval.report",
    "umbif.eval.permutation",
    "umbif.eval.forest",
)
METHOD_PACKAGES = ("umbif.adapt", "umbif.baselines", "umbif.train")
CACHE_LAYOUT = ("plan.json", "index.json", "EXAMS_DIR", "entry_paths", ".image.npy", ".masks.npy", '["files"]')
MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the longest known module prefix)
    names: tuple[str, ...]  # names taken with ``from X import a, b``
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: imports for annotations only, never executed."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _known(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> list[Import]:
    """Every umbif import of ``module``, top-level and inside functions (lazy imports count too)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            if base.split(".")[0] != "umbif":
                continue
            names = tuple(a.name for a in node.names)
            for name in names:  # `from umbif.data import cache` imports the module umbif.data.cache
                full = f"{base}.{name}"
                target = full if full in MODULES else _known(base)
                found.append(Import(module, target, (name,) if target == _known(base) else (), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "umbif":
                    found.append(Import(module, _known(alias.name), (), node.lineno))
    return found


ALL_IMPORTS = [i for m in MODULES for i in imports_of(m)]


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph ``edges`` as a list of nodes, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(edges):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(edges[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(edges.get(child, ())))))
                path.append(child)
    return None


def test_find_cycle_finds_cycles_and_only_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_no_import_cycle_between_modules() -> None:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.target != imp.source and imp.target != "umbif":  # the package root holds only constants
            edges[imp.source].add(imp.target)
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges) or [])}"


def test_every_import_goes_down_the_layers() -> None:
    upward = [
        f"{i.source}:{i.line} imports {i.target} (layer {layer_of(i.target)} > {layer_of(i.source)})"
        for i in ALL_IMPORTS
        if layer_of(i.target) > layer_of(i.source) and i.source != "umbif"  # umbif.load_encoder: a lazy re-export
    ]
    assert not upward, "\n".join(upward)


def test_train_never_imports_adapt_and_the_harness_imports_no_method() -> None:
    def imports_from(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
        return [
            f"{i.source}:{i.line} imports {i.target}"
            for i in ALL_IMPORTS
            if i.source.startswith(sources) and i.target.startswith(targets)
        ]

    assert not imports_from(("umbif.train",), ("umbif.adapt",))
    assert not imports_from(HARNESS, METHOD_PACKAGES)


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{i.source}:{i.line} imports {name} from {i.target}"
        for i in ALL_IMPORTS
        for name in i.names
        if name.startswith("_") and not name.startswith("__") and i.target != i.source
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("umbif.data")))
def test_only_the_data_package_knows_the_cache_layout(module: str) -> None:
    text = MODULES[module].read_text()
    named = [token for token in CACHE_LAYOUT if token in text]
    assert not named, f"{module} names the cache's files {named}; read it through umbif.data.cache.Cache"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_files_stay_readable_in_size(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it where it reads best"


def test_the_checks_see_the_whole_package() -> None:
    assert {"umbif.data.samples", "umbif.eval.methods", "umbif.train.supervised", "umbif.cli"} <= set(MODULES)
    assert any(i.source == "umbif.eval.methods" and i.target.startswith("umbif.adapt") for i in ALL_IMPORTS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_json_reaches_files_only_strict(module: str) -> None:
    """Every JSON file is written through ``umbif.utils.write_json`` / ``json_text`` (``allow_nan=False``):
    no ``json.dump`` to a file, and no ``json.dumps`` without ``allow_nan=False`` handed to a writer."""
    tree = ast.parse(MODULES[module].read_text())
    loose = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if getattr(node.func.value, "id", None) != "json" or node.func.attr not in ("dump", "dumps"):
            continue
        strict = any(k.arg == "allow_nan" and getattr(k.value, "value", True) is False for k in node.keywords)
        if not strict and (node.func.attr == "dump" or _written(tree, node)):
            loose.append(node.lineno)
    assert not loose, f"{module}: JSON written without allow_nan=False at lines {loose}; use umbif.utils.write_json"


def _written(tree: ast.Module, call: ast.Call) -> bool:
    """Whether a ``json.dumps`` call is an argument of a write (``write_text_atomic``, ``.write``, ``write_text``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node is not call:
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in ("write_text_atomic", "write", "write_text") and any(
                call is sub for arg in node.args for sub in ast.walk(arg)
            ):
                return True
    return False
