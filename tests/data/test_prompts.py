"""The prompt code's version (``PROMPT_CODE_HASH``) changes whenever the code it names does.

Every result record and the tokenization cache carry the version, so results and tokens of older prompt code are
redone instead of reused. The version used to be the hash of the two files' bytes, computed at import; it is a
constant now (the files moved, and the hash of their new bytes would have orphaned every result written before), and
this test keeps it honest: any byte of ``data/prompts.py`` or ``data/protocols.py`` that changes fails it until the
change is judged. A change to what a prompt or its tokens are gets a new version (and a new line below); one that
cannot change them (a comment, a docstring, a rename) adds its digest under the same version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from peftbench.data import prompts, protocols

# Version -> the digests of the prompt code that version names (sha256 of prompts.py + protocols.py, 16 hex).
# c584234795fcacef: the math and dialogue variants of the protocols were added; the commonsense prompts, tokens and
# settings are unchanged (tests/data/test_tasks.py, tests/end_to_end/test_run_folder_before_layout.py).
DIGESTS = {"270c5a5da974": {"bb6b03583019644a", "c584234795fcacef"}}


def prompt_code_digest() -> str:
    code = b"".join(Path(module.__file__).read_bytes() for module in (prompts, protocols))
    return hashlib.sha256(code).hexdigest()[:16]


def test_the_prompt_code_version_names_this_code() -> None:
    digest = prompt_code_digest()
    assert digest in DIGESTS.get(prompts.PROMPT_CODE_HASH, set()), (
        f"data/prompts.py or data/protocols.py changed (digest {digest}) under version {prompts.PROMPT_CODE_HASH}: "
        "if prompts or tokens can differ, give PROMPT_CODE_HASH a new value and add it to DIGESTS with this digest; "
        "if they cannot, add the digest to the version's set"
    )
