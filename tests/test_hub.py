"""The hub's endpoint, reachability, pins and failure lines (the hub server itself: end_to_end/test_hub_server.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError

from peftbench import hub
from peftbench.errors import UserError


@pytest.fixture
def endpoint(monkeypatch):
    """Sets HF_ENDPOINT for one test (the module reads it from huggingface_hub's constants) and forgets the probe."""

    def use(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        hub.unreachable.cache_clear()

    yield use
    hub.unreachable.cache_clear()


def test_reachability_is_asked_of_the_endpoints_own_scheme_host_and_port(endpoint) -> None:
    """A mirror at http://127.0.0.1:PORT is reachable when that port listens (not port 443 of its host)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        endpoint(f"http://127.0.0.1:{port}")
        assert hub.unreachable() is None
    endpoint(f"http://127.0.0.1:{port}")  # closed now
    assert "Connection refused" in hub.unreachable()


def test_pins_are_checked_and_read(monkeypatch) -> None:
    assert hub.parse_pins("ybisk/piqa=abc, org/model=v1.0") == {"ybisk/piqa": "abc", "org/model": "v1.0"}
    with pytest.raises(UserError, match="--hub_revisions 'piqa=abc': expected org/name=REVISION"):
        hub.parse_pins("piqa=abc")
    monkeypatch.setattr(hub, "_pins", {})
    hub.pin("ybisk/piqa=abc")
    assert hub.wanted_revision("ybisk/piqa", "refs/convert/parquet") == "abc"
    assert hub.wanted_revision("google/boolq", None) == "main"


def test_a_gated_model_says_where_to_accept_the_licence_and_how_to_log_in(endpoint) -> None:
    endpoint("https://huggingface.co")
    response = SimpleNamespace(headers={}, request=None)
    gated = GatedRepoError("Access to model meta-llama/Llama-2-7b-hf is restricted.", response=response)
    try:
        raise OSError("You are trying to access a gated repo.") from gated  # as transformers wraps it
    except OSError as exc:
        line = hub.failure_line(exc, "meta-llama/Llama-2-7b-hf", "model")
    assert line == (
        "meta-llama/Llama-2-7b-hf is gated: accept its licence at https://huggingface.co/meta-llama/Llama-2-7b-hf "
        "with the account you use here, then log in (`hf auth login`, or set HF_TOKEN)"
    )


def test_an_uncached_revision_offline_is_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "_resolved", {})
    with pytest.raises(UserError, match=r"google/boolq@main is not in the cache and the hub is offline"):
        hub.resolve("google/boolq", "dataset", "main")
    ref = tmp_path / "datasets--google--boolq" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("0" * 40)
    assert hub.resolve("google/boolq", "dataset", "main") == "0" * 40  # what the hub's own cache says
