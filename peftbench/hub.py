"""The Hugging Face hub: where it is (``HF_ENDPOINT``, a mirror's scheme, host and port included), whether it
answers, which commit a revision names, the revisions a run pins, and one line for each way a hub load fails.

Every repository a result depends on is read at a commit, never at a moving branch: a revision (``main``, a tag,
``refs/convert/parquet``) is resolved to its commit first, the commit is what is loaded, and it is recorded with the
result. Resolved commits are remembered under the peftbench cache, so an offline process (``HF_HUB_OFFLINE=1``)
reads the same commit from the hub's cache that an online one resolved.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import urllib.parse
from pathlib import Path

from peftbench.cache import cache_root
from peftbench.errors import UserError

logger = logging.getLogger(__name__)
ANSWER_WITHIN_S = 5  # an endpoint that does not accept a connection by then is reported, not retried for minutes
COMMIT = re.compile(r"[0-9a-f]{40}")
_pins: dict[str, str] = {}  # repository id -> the revision this process must read it at (--hub_revisions)
_network_failure: list[str] = []  # the first network failure's line: later repositories fail with it at once
# Commits resolved in this process: a model's tokenizer, weights and fingerprint ask once, and see the same commit.
_resolved: dict[str, str] = {}


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def unreachable() -> str | None:
    """Why the endpoint cannot be reached (one TCP connection to its host and port, once per process), or None."""
    address = urllib.parse.urlparse(endpoint())
    port = address.port or (80 if address.scheme == "http" else 443)
    try:
        socket.create_connection((address.hostname or "", port), timeout=ANSWER_WITHIN_S).close()
    except OSError as exc:
        return f"{address.hostname}:{port}: {exc.strerror or exc}"
    return None


def require_reachable() -> None:
    """One line, within seconds, when an online process cannot reach its endpoint (instead of each load retrying)."""
    if not is_offline() and (reason := unreachable()) is not None:
        raise UserError(
            f"the Hugging Face hub at {endpoint()} does not answer ({reason}): check HF_ENDPOINT and the network, "
            "or work from the cache with HF_HUB_OFFLINE=1"
        )


def parse_pins(setting: str | None) -> dict[str, str]:
    """``--hub_revisions 'org/name=REVISION,org/other=REVISION'`` as a dict, checked."""
    pins = {}
    for item in (setting or "").split(","):
        if not item.strip():
            continue
        repo, _, revision = item.strip().partition("=")
        if repo.count("/") != 1 or not revision:
            raise UserError(f"--hub_revisions {item.strip()!r}: expected org/name=REVISION (a commit, branch or tag)")
        pins[repo] = revision
    return pins


def pin(setting: str | None) -> None:
    """Read the repositories of this process at the revisions given (``--hub_revisions``)."""
    _pins.clear()
    _pins.update(parse_pins(setting))


def wanted_revision(repo: str, default: str | None = None) -> str:
    return _pins.get(repo) or default or "main"


def _remembered_file() -> Path:
    return cache_root() / "hub_revisions.json"


def _remember(key: str, commit: str) -> None:
    path = _remembered_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(path.read_text()) if path.is_file() else {}
    if known.get(key) != commit:
        known[key] = commit
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_text(json.dumps(known, indent=1, sort_keys=True))
        staging.replace(path)


def _remembered(key: str) -> str | None:
    path = _remembered_file()
    return json.loads(path.read_text()).get(key) if path.is_file() else None


def resolve(repo: str, kind: str, revision: str) -> str:
    """The commit ``revision`` names in the ``kind`` ('dataset' or 'model') repository ``repo``."""
    if COMMIT.fullmatch(revision):
        return revision
    key = f"{kind}s/{repo}@{revision}"
    if key not in _resolved:
        _resolved[key] = (
            _resolve_offline(repo, kind, revision, key) if is_offline() else _resolve_online(repo, kind, revision, key)
        )
    return _resolved[key]


def _resolve_offline(repo: str, kind: str, revision: str, key: str) -> str:
    commit = _remembered(key) or _hub_cache_ref(repo, kind, revision)
    if commit is None:
        local = "; or use a local folder, or --model_name smollm2-135m (embedded)" if kind == "model" else ""
        raise UserError(f"{repo}@{revision} is not in the cache and the hub is offline (HF_HUB_OFFLINE): load it "
                        f"once online, or pin a cached commit with --hub_revisions{local}")  # fmt: skip
    return commit


def _resolve_online(repo: str, kind: str, revision: str, key: str) -> str:
    require_reachable()
    if _network_failure:
        raise UserError(_network_failure[0])
    from huggingface_hub import HfApi

    try:
        commit = HfApi(endpoint=endpoint()).repo_info(repo, repo_type=kind, revision=revision, timeout=30).sha
    except Exception as exc:  # noqa: BLE001 -- every hub failure becomes one line
        line = failure_line(exc, repo, kind, revision)
        if any(_is_network_error(e) for e in _causes(exc)):
            _network_failure.append(line)
        raise UserError(line) from None
    _remember(key, commit)
    return commit


def _hub_cache_ref(repo: str, kind: str, revision: str) -> str | None:
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"{kind}s--{repo.replace('/', '--')}" / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def failure_line(exc: BaseException, repo: str, kind: str, revision: str | None = None) -> str:
    """What went wrong loading ``repo`` from the hub, in one line that says what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{endpoint()}/{'datasets/' if kind == 'dataset' else ''}{repo}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    chain = _causes(exc)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return (f"{repo} is gated: accept its licence at {where} with the account you use here, then log in "
                "(`hf auth login`, or set HF_TOKEN)")  # fmt: skip
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return f"{repo} has no revision {revision!r} on {endpoint()}"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or type(exc).__name__ == "DatasetNotFoundError":
        return f"no {kind} repository {repo} on {endpoint()} (or it is private: log in with `hf auth login`)"
    if script := re.search(r"found (\S+\.py)", text):
        return (f"{repo} holds only a loading script ({script.group(1)}), which datasets ≥ 4 no longer runs; read "
                "a revision with data files (its refs/convert/parquet) with --hub_revisions")  # fmt: skip
    if any(_is_network_error(e) for e in chain):
        return f"the Hugging Face hub at {endpoint()} does not answer ({text}); or work offline with HF_HUB_OFFLINE=1"
    return f"{repo}: {text}"


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError | TimeoutError) or type(exc).__name__ in ("ConnectError", "ConnectTimeout")
