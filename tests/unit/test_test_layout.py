"""The test suite's own layout: every test that needs the lab says so with the `lab` marker, and
test modules share helpers through tests/helpers/, never by importing each other or conftest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _is_lab_mark(node: ast.expr) -> bool:
    """`pytest.mark.lab` (or `mark.lab`), called or not."""
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "lab" and (
        isinstance(node.value, ast.Attribute) and node.value.attr == "mark"
        or isinstance(node.value, ast.Name) and node.value.id == "mark")


def _is_fixture(decorator: ast.expr) -> bool:
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    return (isinstance(decorator, ast.Attribute) and decorator.attr == "fixture"
            or isinstance(decorator, ast.Name) and decorator.id == "fixture")


def _module_marked(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                value = node.value
                items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
                if any(item is not None and _is_lab_mark(item) for item in items):
                    return True
    return False


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _arguments(fn: Function) -> set[str]:
    args = fn.args
    return {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}


def lab_marking_problems(source: str, name: str) -> list[str]:
    """Tests of `source` that take the `lab` fixture, or a fixture of the same module that
    depends on it, without the `lab` marker (on the module, their class or themselves)."""
    tree = ast.parse(source, name)
    module_marked = _module_marked(tree)
    functions: list[tuple[Function, bool]] = []  # (function, marked by its class)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append((node, False))
        elif isinstance(node, ast.ClassDef):
            class_marked = any(_is_lab_mark(d) for d in node.decorator_list)
            functions += [(f, class_marked) for f in node.body
                          if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    fixtures = {f.name: _arguments(f) for f, _ in functions
                if any(_is_fixture(d) for d in f.decorator_list)}
    needs_lab = {"lab"}
    grew = True
    while grew:  # fixtures that use the lab, directly or through each other
        more = {n for n, args in fixtures.items() if args & needs_lab} - needs_lab
        grew = bool(more)
        needs_lab |= more
    return [f"{name}::{fn.name}" for fn, class_marked in functions
            if fn.name.startswith("test") and _arguments(fn) & needs_lab
            and not (module_marked or class_marked or any(_is_lab_mark(d) for d in fn.decorator_list))]


def import_problems(source: str, name: str) -> list[str]:
    """Imports of test modules (test_*) or of conftest: shared code belongs in tests/helpers/."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            modules = [base] + [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
        for module in modules:
            parts = module.split(".")
            if any(p.startswith("test_") or p == "conftest" for p in parts):
                found.append(f"{name}:{node.lineno} imports {module}")
                break
    return found


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(TESTS.rglob("*.py"))]


def test_every_test_that_uses_the_lab_is_marked_lab() -> None:
    problems = [problem for path, text in _sources() if path.name.startswith("test_")
                for problem in lab_marking_problems(text, str(path.relative_to(TESTS)))]
    assert problems == [], "add `pytestmark = pytest.mark.lab` (or @pytest.mark.lab): " + ", ".join(
        problems)


def test_no_module_imports_a_test_module_or_conftest() -> None:
    problems = [problem for path, text in _sources() if path.name != "conftest.py"
                for problem in import_problems(text, str(path.relative_to(TESTS)))]
    assert problems == [], "move shared code to tests/helpers/: " + ", ".join(problems)


def test_the_lab_fixture_is_the_only_conftest_and_helpers_are_a_package() -> None:
    assert [p.relative_to(TESTS) for p in TESTS.rglob("conftest.py")] == [Path("conftest.py")]
    assert (TESTS / "helpers" / "__init__.py").exists()
    assert not [p for p in (TESTS / "helpers").glob("test_*.py")]


UNMARKED = '''
import pytest

@pytest.fixture
def hub(lab):
    yield lab

@pytest.fixture
def alice(hub):
    return hub

def helper(lab):
    return lab

def test_direct(lab): ...

async def test_through_two_fixtures(alice): ...

@pytest.mark.lab
def test_marked(lab): ...

def test_no_lab(tmp_path): ...

@pytest.mark.lab
class TestGroup:
    def test_in_marked_class(self, hub): ...

class TestOther:
    def test_in_plain_class(self, hub): ...
'''


def test_the_marking_check_sees_fixtures_classes_and_module_marks() -> None:
    assert lab_marking_problems(UNMARKED, "m.py") == [
        "m.py::test_direct", "m.py::test_through_two_fixtures", "m.py::test_in_plain_class"]
    for mark in ("pytestmark = pytest.mark.lab", "pytestmark = [pytest.mark.asyncio, pytest.mark.lab]"):
        assert lab_marking_problems(UNMARKED + mark + "\n", "m.py") == []


@pytest.mark.parametrize(("line", "bad"), [
    ("from tests.e2e.test_spawn import Hub", True),
    ("from tests.conftest import SHARED", True),
    ("import tests.integration.test_ldap_login", True),
    ("from tests.e2e import test_tunnel", True),
    ("from . import conftest", True),
    ("from tests.helpers.hub import Hub", False),
    ("from schedulers.model import JobRequest", False),
])
def test_the_import_check(line: str, bad: bool) -> None:
    assert bool(import_problems(line + "\n", "m.py")) is bad
