"""The import rules of ARCHITECTURE.md, checked over every module's `import` statements (`ast`, nothing imported)."""

import ast
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

# Third-party packages a checkpoint file may import: remote code has the Hub's transformers stack and nothing else.
CHECKPOINT_PACKAGES = {"torch", "transformers", "PIL", "numpy", "tokenizers"}
# the trainers are not carried by checkpoints (nothing a checkpoint file imports reaches them)
EXTRA_CHECKPOINT_PACKAGES = {"trainer_unimp.py": {"peft"}, "preference_trainer_unimp.py": {"peft", "trl"}}
FORBIDDEN = {  # package -> first-party packages it must never import
    "modeling_unimp": {"processing", "recipes", "benchmarks", "tests"},
    "processing": {"recipes", "benchmarks", "tests"},
    "recipes": {"benchmarks", "tests"},
}


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, imported module, relative level) of every import statement, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downstream_of_the_architecture(package):
    violations = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for path in _modules(package)
        for line, module, level in _imports(path)
        if level == 0 and module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not violations, "imports against ARCHITECTURE.md:\n" + "\n".join(violations)


def test_checkpoint_files_import_their_stack_and_same_folder_modules_only():
    violations = []
    for path in _modules("modeling_unimp"):
        allowed = CHECKPOINT_PACKAGES | EXTRA_CHECKPOINT_PACKAGES.get(path.name, set())
        for line, module, level in _imports(path):
            top = module.split(".")[0]
            if level == 0 and top not in allowed and top not in sys.stdlib_module_names:
                violations.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module}")
            if level > 1:  # remote code copies one folder: `..` reaches nothing
                violations.append(f"{path.relative_to(REPO_ROOT)}:{line} imports from {'.' * level}{module}")
    assert not violations, "checkpoint files must be self-contained (ARCHITECTURE.md):\n" + "\n".join(violations)


def test_the_rules_catch_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from processing.collator_unimp import UniMPDataCollator\n")
    assert _imports(bad) == [(2, "processing.collator_unimp", 0)]
