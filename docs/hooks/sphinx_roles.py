"""Griffe extension for the API reference: show Sphinx cross-reference roles as inline code.

Docstrings in physlens write ``:class:`~physlens.systems.Uniform``` the Sphinx way; mkdocstrings
renders Markdown, where the role prefix would show up verbatim. A ``~`` keeps only the last name,
as Sphinx does.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    shorten, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if shorten else target}`"


def strip_roles(text: str) -> str:
    """``:class:`~a.b.C``` → `` `C` ``; ``:func:`f``` → `` `f` ``."""
    return ROLE.sub(_code, text)


class SphinxRoles(Extension):
    """Rewrite Sphinx roles in every docstring once the object tree is loaded."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
