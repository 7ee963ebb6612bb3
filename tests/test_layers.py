"""The layer rule of ARCHITECTURE.md: no module imports a layer to its right, at the top of a
file or inside a function."""

import ast
from pathlib import Path

import crammit

PACKAGE = Path(crammit.__file__).parent
# Left to right, as ARCHITECTURE.md draws them; a module may import its own layer and those before it.
LAYERS = (
    {"errors", "io", "cluster", "versions"},
    {"config"},
    {"track"},
    {"model"},
    {"data"},
    {"train"},
    {"eval"},
    {"study"},
    {"cli", "__main__"},
)


def layer_of(module: str) -> int:
    """`module` is dotted below crammit: "train.loop", "config"."""
    top = module.split(".")[0]
    return next(index for index, names in enumerate(LAYERS) if top in names)


def crammit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module below crammit) of every import of crammit in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "crammit":  # from crammit import x
            names = [f"crammit.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name.removeprefix("crammit.")) for name in names
                  if name.startswith("crammit.")]
    return found


def test_every_module_belongs_to_a_layer_and_imports_none_to_its_right():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    violations = []
    for path in modules:
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module == "__init__":
            continue
        own = layer_of(module)
        violations += [f"{module}:{line} imports {name}" for line, name in crammit_imports(path)
                       if layer_of(name) > own]
    assert violations == []


def test_the_rule_catches_an_import_to_the_right(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from crammit.study import fit\n")
    assert [layer_of(name) for _, name in crammit_imports(sneaky)] == [layer_of("study.fit")]
    assert layer_of("study.fit") > layer_of("train.loop")
