"""Dependencies point one way (docs/DESIGN.md §1), read from every module's syntax tree, not grepped:

    bench → rtcore, export, kernels;   export → rtcore, kernels;   kernels → nothing of rtcore's
    rtcore (the runtime) → export, bench and kernels only inside the functions that need them

so that editing a benchmark cannot change how the shipped model is trained, and a service that loads engines
never imports the export stack."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rtcore": ROOT / "rtcore", "rtcore.export": ROOT / "export", "rtcore.kernels": ROOT / "kernels",
            "rtcore.bench": ROOT / "bench"}
# what each package may import from the others: anywhere in a module, and at its top level
ALLOWED = {"rtcore.bench": {"rtcore", "rtcore.export", "rtcore.kernels"},
           "rtcore.export": {"rtcore", "rtcore.kernels"},
           "rtcore.kernels": set(),
           "rtcore": {"rtcore.export", "rtcore.bench", "rtcore.kernels"}}
TOP_LEVEL_ALLOWED = {**ALLOWED, "rtcore": set()}


def package_of(module):
    """The package of ALLOWED an absolute module name belongs to, or None outside rtcore."""
    for name in ("rtcore.export", "rtcore.kernels", "rtcore.bench"):
        if module == name or module.startswith(name + "."):
            return name
    return "rtcore" if module == "rtcore" or module.startswith("rtcore.") else None


def imports(path, package):
    """(imported module, at top level?) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = package.split(".")  # what "." means in any module of the package (no subfolders hold modules)
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # "from rtcore import export" imports the subpackage, not the runtime
            found += [(f"{module}.{alias.name}" if module == "rtcore" else module, id(node) in top)
                      for alias in node.names]
    return found


def edges():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            for module, top_level in imports(path, package):
                target = package_of(module)
                if target is not None and target != package:
                    yield package, path.relative_to(ROOT), module, target, top_level


def test_no_import_points_the_wrong_way():
    wrong = [f"{path}: imports {module}" for package, path, module, target, _ in edges()
             if target not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_the_runtime_imports_export_and_bench_only_where_it_needs_them():
    eager = [f"{path}: imports {module} at import time" for package, path, module, target, top in edges()
             if top and target not in TOP_LEVEL_ALLOWED[package]]
    assert not eager, "\n".join(eager)


def test_the_checker_sees_a_wrong_edge(tmp_path):
    """The AST walk resolves relative imports and finds one inside a function: a check that can fail."""
    module = tmp_path / "trainer.py"
    module.write_text("import torch\nfrom ..bench.quality import colour_contrast\n\n\ndef f():\n"
                      "    from rtcore.bench import common\n")
    found = imports(module, "rtcore.export")
    assert ("rtcore.bench.quality", True) in found and ("rtcore.bench", False) in found
    assert [package_of(m) for m, _ in found] == [None, "rtcore.bench", "rtcore.bench"]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_is_read(package):
    assert list(PACKAGES[package].glob("*.py")), package
