"""The API reference covers the library: every public name has a docstring and every subpackage a page.

Public means listed in a subpackage's ``__all__``. The reference pages render those names with
mkdocstrings (``::: physlens.<subpackage>``), which shows what these tests check is there.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import physlens

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SUBPACKAGES = sorted(info.name for info in pkgutil.iter_modules(physlens.__path__) if info.ispkg)


def _subpackage(name: str) -> ModuleType:
    return importlib.import_module(f"physlens.{name}")


def _submodules(package: ModuleType) -> list[ModuleType]:
    return [package] + [
        importlib.import_module(f"{package.__name__}.{info.name}") for info in pkgutil.iter_modules(package.__path__)
    ]


def _has_attribute_docstring(module: ModuleType, name: str) -> bool:
    """True if ``module``'s source assigns ``name`` at top level and follows it with a string literal
    (the attribute-docstring convention that mkdocstrings renders)."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return False
    body = tree.body
    for index, node in enumerate(body[:-1]):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if not any(isinstance(target, ast.Name) and target.id == name for target in targets):
            continue
        following = body[index + 1]
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and following.value.value.strip()
        ):
            return True
    return False


def _docstring_problem(package: ModuleType, name: str) -> str | None:
    """Why ``package.name`` has no usable docstring, or None if it has one."""
    if not hasattr(package, name):
        return "is listed in __all__ but does not exist"
    obj = getattr(package, name)
    if inspect.isclass(obj):
        own = obj.__dict__.get("__doc__")
        if not own or not own.strip():
            return "class has no docstring of its own"
        if dataclasses.is_dataclass(obj) and own.startswith(f"{obj.__name__}("):
            return "dataclass has only the generated signature as its docstring"
        return None
    if inspect.isroutine(obj) or isinstance(obj, ModuleType):
        return None if (obj.__doc__ or "").strip() else "has no docstring"
    # Constants, registries and type aliases carry their docstring in the source, after the assignment.
    if any(_has_attribute_docstring(module, name) for module in _submodules(package)):
        return None
    return "has no attribute docstring (a string literal right after the assignment)"


def test_every_subpackage_is_found() -> None:
    assert {"systems", "models", "training", "probes", "plots", "studies"} <= set(SUBPACKAGES)


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_subpackage_declares_its_public_names(subpackage: str) -> None:
    package = _subpackage(subpackage)
    assert (package.__doc__ or "").strip(), f"physlens.{subpackage} has no module docstring"
    public = getattr(package, "__all__", None)
    assert public, f"physlens.{subpackage} has no (or an empty) __all__"
    duplicates = sorted({name for name in public if public.count(name) > 1})
    assert not duplicates, f"physlens.{subpackage}.__all__ lists {duplicates} more than once"


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_every_public_name_has_a_docstring(subpackage: str) -> None:
    package = _subpackage(subpackage)
    problems = []
    for name in getattr(package, "__all__", []):
        problem = _docstring_problem(package, name)
        if problem is not None:
            problems.append(f"physlens.{subpackage}.{name} {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_every_subpackage_has_an_api_page(subpackage: str) -> None:
    page = DOCS / "api" / f"{subpackage}.md"
    assert page.is_file(), f"no API page {page.relative_to(ROOT)} for physlens.{subpackage}"
    text = page.read_text()
    assert re.search(rf"^::: physlens\.{subpackage}\s*$", text, re.MULTILINE), (
        f"{page.relative_to(ROOT)} does not render physlens.{subpackage} with '::: physlens.{subpackage}'"
    )
    assert f"api/{subpackage}.md" in (ROOT / "mkdocs.yml").read_text(), f"api/{subpackage}.md is not in the nav"


def _needs_own_directive(package: ModuleType, name: str, submodules: set[str]) -> str | None:
    """The ``:::`` path a public name needs when ``::: physlens.<subpackage>`` cannot render it, else None.

    Two cases: the name is also a submodule's name (the static renderer would see the module;
    ``tests/test_package.py`` keeps such names from existing), or the object is defined outside
    physlens (a re-export such as TransformerLens's ``PatchingResult``, which the renderer does not
    follow).
    """
    obj = getattr(package, name, None)
    if obj is None or isinstance(obj, ModuleType) or not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return None
    path = f"{obj.__module__}.{obj.__qualname__}"
    if name in submodules or not obj.__module__.startswith("physlens."):
        return path
    return None


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_names_the_package_directive_misses_are_rendered_explicitly(subpackage: str) -> None:
    package = _subpackage(subpackage)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    text = (DOCS / "api" / f"{subpackage}.md").read_text()
    missing = []
    for name in getattr(package, "__all__", []):
        path = _needs_own_directive(package, name, submodules)
        if path is not None and not re.search(rf"^::: {re.escape(path)}\s*$", text, re.MULTILINE):
            missing.append(path)
    assert not missing, (
        f"public names of physlens.{subpackage} that '::: physlens.{subpackage}' cannot render (shadowed by a "
        f"submodule, or defined outside physlens) need their own directive in docs/api/{subpackage}.md: "
        + ", ".join(f"'::: {path}'" for path in missing)
    )


def test_tutorials_are_in_the_nav_and_their_code_compiles() -> None:
    """Every tutorial is reachable, and every executed block is valid Python (the full execution is
    the slow docs build)."""
    nav = (ROOT / "mkdocs.yml").read_text()
    tutorials = sorted((DOCS / "tutorials").glob("*.md"))
    assert tutorials
    for page in tutorials:
        assert f"tutorials/{page.name}" in nav, f"{page.name} is not in the mkdocs nav"
        blocks = re.findall(r'```python exec="on"[^\n]*\n(.*?)\n```', page.read_text(), re.DOTALL)
        assert blocks, f"{page.name} has no executed code block"
        assert any("torch.set_num_threads(1)" in block for block in blocks[:1]), (
            f"{page.name} should start with torch.set_num_threads(1): tiny models run fastest on one thread"
        )
        for index, block in enumerate(blocks):
            compile(block, f"{page.name}, block {index}", "exec")


def test_attribute_docstring_detection() -> None:
    """The source check finds documented constants and rejects undocumented ones."""
    from physlens.models import base

    assert _has_attribute_docstring(base, "MODEL_REGISTRY")
    assert not _has_attribute_docstring(base, "M")  # a TypeVar with no docstring after it
    assert not _has_attribute_docstring(base, "no_such_name")


def test_sphinx_roles_render_as_inline_code() -> None:
    """The API reference's griffe extension turns Sphinx roles into Markdown code spans."""
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "hooks" / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "a :class:`~physlens.systems.Uniform`, :func:`physlens.training.train` and :meth:`fit`; ``code`` stays"
    assert module.strip_roles(text) == "a `Uniform`, `physlens.training.train` and `fit`; ``code`` stays"
    assert module.ROLE.search(":class:`X`") and not module.ROLE.search("`X`")


@pytest.mark.parametrize(("module_name", "class_name"), [("physlens.training.trainer", "TrainConfig"),
                                                         ("physlens.training.ensemble", "EnsembleTrainConfig")])
def test_every_config_field_has_an_attribute_docstring(module_name: str, class_name: str) -> None:
    """help() and the API reference show what each field means: a string literal follows every field."""
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    body = cls.body
    fields = [f.name for f in dataclasses.fields(getattr(module, class_name))]
    documented = {
        stmt.target.id for stmt, after in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
    }
    assert [name for name in fields if name not in documented] == []
