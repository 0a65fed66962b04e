"""The prompt code's version (``PROMPT_CODE_HASH``) changes whenever the code it names does.

Every result record and the tokenization cache carry the version, so results and tokens of older prompt code are
redone instead of reused. The digest below is of that code's syntax (imports, docstrings, comments and the version
itself left out): a change to a prompt, a template or the tokenization fails this test until the version changes.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from peftbench.data import prompts, protocols

# The code's digest at each version; a new version adds a line.
DIGESTS = {"270c5a5da974": "7bcec1b832a28a94"}


def _without_imports_and_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        body[:] = [
            statement
            for index, statement in enumerate(body)
            if not isinstance(statement, ast.Import | ast.ImportFrom)
            and not (index == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
            and not (isinstance(statement, ast.Assign) and ast.unparse(statement.targets[0]) == "PROMPT_CODE_HASH")
        ]
    return tree


def prompt_code_digest() -> str:
    dumps = [
        ast.dump(_without_imports_and_docstrings(ast.parse(Path(m.__file__).read_text()))) for m in (prompts, protocols)
    ]
    return hashlib.sha256("\n".join(dumps).encode()).hexdigest()[:16]


def test_the_prompt_code_version_changes_with_the_code() -> None:
    digest = prompt_code_digest()
    assert DIGESTS.get(prompts.PROMPT_CODE_HASH) == digest, (
        f"the prompt or tokenization code changed (digest {digest}) under version {prompts.PROMPT_CODE_HASH}: give "
        "PROMPT_CODE_HASH in peftbench/data/prompts.py a new value and add it with this digest to DIGESTS"
    )


def test_the_digest_ignores_imports_docstrings_and_comments_but_not_code() -> None:
    source = '"""doc"""\nimport os\n# a comment\ndef f(x):\n    """doc"""\n    return x + 1\n'
    digest = ast.dump(_without_imports_and_docstrings(ast.parse(source)))
    assert digest == ast.dump(_without_imports_and_docstrings(ast.parse("def f(x):\n    return x + 1\n")))
    assert digest != ast.dump(_without_imports_and_docstrings(ast.parse("def f(x):\n    return x + 2\n")))
