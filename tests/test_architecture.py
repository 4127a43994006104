"""The structure the code promises (README "Layout"), checked on the source:

- data flows one way: core -> training -> export -> runtime -> bench; no module imports a
  later stage (any import statement, at module level or inside a function);
- no import circles among the product's modules (imports inside functions count too), and no
  module imports a private name (``_name`` or a ``_module``) of another stage;
- the runtime imports neither torch (outside its torch backend) nor export or training, and a
  Runtime on the onnxruntime backend runs without loading them;
- a backend is a package with a loader and a runner, listed once in the registry;
- the paper-reproduction harness (reproduce/) is not part of the installed product: no product
  module imports it (``oat-edge reproduce`` loads it by name from the checkout);
- with the repository root first on sys.path (``python`` started there, a regular install
  elsewhere), ``oat_edge.<stage>`` still imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("core", "training", "export", "runtime", "bench")
FOLDERS = {"oat_edge": "core", "training": "training", "export": "export", "runtime": "runtime", "bench": "bench"}


def _stage_of_module(name: str):
    """Stage of an absolute module name, or None for a module outside oat-edge."""
    parts = name.split(".")
    if parts[0] != "oat_edge":
        return None
    if len(parts) > 1 and parts[1] in ORDER[1:]:
        return parts[1]
    return "core"


def _imports(path: Path):
    """Every absolute module name a file imports (module level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, node.col_offset
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno, node.col_offset
            for a in node.names:  # `from oat_edge import bench` imports the stage oat_edge.bench
                yield f"{node.module}.{a.name}", node.lineno, node.col_offset


def _source_files():
    for folder, stage in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield stage, path


def test_no_stage_imports_a_later_stage():
    bad = []
    for stage, path in _source_files():
        for name, line, _col in _imports(path):
            target = _stage_of_module(name)
            if target is not None and ORDER.index(target) > ORDER.index(stage):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({stage}) imports {name} ({target})")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


PACKAGES = {"oat_edge": "oat_edge", "training": "oat_edge.training", "export": "oat_edge.export",
            "runtime": "oat_edge.runtime", "bench": "oat_edge.bench"}


def _module_files(root: Path = ROOT):
    """{absolute module name: file} of every product module."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(root / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def import_graph(root: Path = ROOT):
    """{module: the product modules it imports}. ``from package import submodule`` is an edge to
    the submodule only, ``from module import name`` to the module (a package's own parents are
    imported first by Python and are not edges)."""
    files = _module_files(root)
    graph = {}
    for module, path in files.items():
        targets = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Imports under `if TYPE_CHECKING:` only name types for annotations; they never run.
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    targets.add(sub if sub in files else node.module)
        graph[module] = {name for name in targets if name in files and name != module}
    return graph


def import_circles(graph):
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(component)
    return circles


def test_no_import_circles():
    circles = import_circles(import_graph())
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in circles)


def _private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def private_imports(root: Path = ROOT):
    """Imports of another stage's private name or module: ``from oat_edge.x import _name``,
    ``from oat_edge.x._mod import name``, ``import oat_edge.x._mod``."""
    bad = []
    for folder, stage in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    target = _stage_of_module(name)
                    if target is not None and target != stage and _private(name):
                        bad.append(f"{path.relative_to(root)}:{node.lineno} ({stage}) imports {name} ({target})")
    return bad


def test_no_stage_imports_a_private_name_of_another():
    bad = private_imports()
    assert not bad, "private names imported across stages:\n" + "\n".join(bad)


def test_the_structure_checks_catch_a_circle_and_a_private_import(tmp_path):
    """On a copy of the tree with one added circle and one private import, both checks fire."""
    import shutil

    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("csrc", "__pycache__"))
    film = tmp_path / "oat_edge" / "bundle" / "film.py"
    film.write_text(film.read_text(encoding="utf-8") + "\n\ndef _circle():\n    from oat_edge.bundle import manifest\n")
    cli = tmp_path / "export" / "cli.py"
    cli.write_text(cli.read_text(encoding="utf-8") + "\n\ndef _private():\n    from oat_edge.bundle.schema import _loc\n")
    circles = import_circles(import_graph(tmp_path))
    assert any({"oat_edge.bundle.film", "oat_edge.bundle.manifest"} <= c for c in circles)
    assert any("oat_edge.bundle.schema._loc" in line for line in private_imports(tmp_path))


def test_core_stage_clis_are_loaded_by_name_only():
    """oat_edge/cli.py reaches the stages through STAGE_CLIS (importlib), never an import."""
    from oat_edge.cli import STAGE_CLIS

    assert [_stage_of_module(n) for n in STAGE_CLIS] == list(ORDER[1:])


def test_the_reproduction_harness_is_outside_the_product():
    wheel = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("wheel.packages"))
    assert "reproduce" not in wheel
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}" for _stage, path in _source_files()
           for name, line, _col in _imports(path) if name.split(".")[0] == "reproduce"]
    assert not bad, "the product imports the reproduction harness:\n" + "\n".join(bad)


TORCH_BACKEND = ("runtime/backends/torch/", "runtime/backends/onnx_torch.py")


def test_runtime_imports_neither_torch_nor_earlier_stages_code():
    bad = []
    for stage, path in _source_files():
        if stage != "runtime":
            continue
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.startswith(("oat_edge.export", "oat_edge.training")):
                    bad.append(f"{rel}:{node.lineno} imports {name}")
                if name.split(".")[0] == "torch" and id(node) in top_level and not rel.startswith(TORCH_BACKEND):
                    bad.append(f"{rel}:{node.lineno} imports torch at module level")
    assert not bad, "\n".join(bad)


def test_a_runtime_on_onnxruntime_loads_no_torch_export_or_training():
    code = ("import sys; from oat_edge.runtime import Runtime; import numpy as np; "
            f"rt = Runtime({str(ROOT / 'tests/fixtures/legacy_bundle')!r}, backend='onnxruntime', threads=1); "
            "rt.set_mode(0.3, 1.0); rt.infer(np.zeros((1, 1, 8, 8), np.float32)); "
            "from oat_edge.runtime.verify import verify_bundle; "
            f"verify_bundle({str(ROOT / 'tests/fixtures/legacy_bundle')!r}, threads=1); "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('oat_edge.export', "
            "'oat_edge.training', 'oat_edge.bench'))); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_backends_are_registered_packages_with_loader_and_runner():
    from oat_edge.runtime import backends

    assert list(backends.REGISTRY) == ["onnxruntime", "torch", "tensorrt", "openvino"]
    for b in backends.REGISTRY.values():
        folder = ROOT / "runtime" / "backends" / b.name
        assert (folder / "loader.py").is_file() and (folder / "runner.py").is_file(), b.name
        loader = b.loader()
        assert callable(loader.available) and isinstance(loader.available(), tuple)
        if b.auto:
            assert callable(loader.auto_check)
    assert backends.names() == ["auto", "onnxruntime", "torch", "tensorrt", "openvino"]


def test_export_targets_are_registered():
    from oat_edge.export.targets import TARGETS, ExportTarget, load_targets

    targets = load_targets()
    assert [t.name for t in targets] == list(TARGETS) == ["onnx", "tensorrt"]
    assert all(isinstance(t, ExportTarget) and t.phase in ("graphs", "device") for t in targets)


@pytest.mark.parametrize("stage", ["training", "export", "runtime", "bench"])
def test_stages_import_from_the_repository_root(stage):
    """A regular (non-editable) install and `python` started in the repository root: the
    checkout's oat_edge/ is imported first; its stages must still be found."""
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Redirecting' not in type(f).__name__]; "
            f"sys.path.insert(0, {str(ROOT)!r}); import oat_edge.{stage} as m; "
            f"assert m.__file__ == {str(ROOT / stage / '__init__.py')!r}, m.__file__")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
