"""Imports only go down: each part of the package imports only from the layers
below it (docs/architecture.md draws them), and the test doubles are not in it."""
import ast
from pathlib import Path

import flakebot

PKG = Path(flakebot.__file__).parent
# bottom to top; parts on one line may not import each other
LAYERS = [
    {"model"},
    {"config", "history", "store", "evidence", "analysis", "demo"},
    {"executors"},
    {"campaigns"},
    {"report"},
    {"reporters"},
    {"service"},
    {"cli"},
    {"__main__"},
]
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(dotted: str) -> str:
    return dotted.split(".")[1]


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "flakebot":
                yield from (f"flakebot.{a.name}" for a in node.names)
            elif node.module.startswith("flakebot."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("flakebot."))


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        if rel.parts[-1] == "__init__" and len(rel.parts) == 2:
            continue  # flakebot/__init__.py
        yield path, ".".join(rel.parts)


def test_every_part_has_a_layer():
    parts = {part_of(name) for _, name in modules()}
    assert parts <= set(LEVEL), f"not in a layer: {sorted(parts - set(LEVEL))}"


def test_imports_only_go_down():
    wrong = []
    for path, name in modules():
        mine = LEVEL[part_of(name)]
        for target in imports(path):
            other = part_of(target)
            if other != part_of(name) and LEVEL.get(other, -1) >= mine:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_package_root_holds_only_shared_modules():
    root = {p.stem for p in PKG.glob("*.py")}
    assert root == {"__init__", "__main__", "model", "config", "store", "history"}


def test_the_test_doubles_are_not_in_the_package():
    assert not (PKG / "fakes").exists()
    for path, name in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(m == "tests" or m.startswith("tests.") for m in mods), name


def test_every_path_the_architecture_doc_names_exists():
    root = PKG.parent
    doc = (root / "docs" / "architecture.md").read_text()
    import re

    named = set(re.findall(r"`((?:flakebot|tests|jobs|docs|benchmarks)/[\w/.-]*)`", doc))
    named |= {f"docs/{m}" for m in re.findall(r"\]\(([\w.-]+\.md)\)", doc)}
    assert len(named) > 20
    missing = sorted(p for p in named if not (root / p).exists())
    assert not missing, missing
