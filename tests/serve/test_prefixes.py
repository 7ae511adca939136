"""Loading prefixes while serving: off unless the operator names prefix roots, confined to them,
never changing the shared model, and only under names that round-trip."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from safetensors.torch import save_file  # noqa: E402
from serving import BASE, ServerThread, solo_text  # noqa: E402

from prefixtune.errors import PrefixTuneError  # noqa: E402
from prefixtune.serve.prefixes import NotAllowed, find_prefix_folder, resolve_roots  # noqa: E402

TIMEOUT = httpx.Timeout(20.0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A prefix root holding one good prefix, and a good prefix outside it."""
    from serving import tiny_bank

    tmp = tmp_path_factory.mktemp("prefixes")
    root, outside = tmp / "root", tmp / "outside"
    bank = tiny_bank()
    bank.save(root / "saved", name="a")
    bank.save(outside / "secret", name="b")
    (root / "link").symlink_to(outside / "secret")
    (root / "empty").mkdir()
    (root / "file").write_text("not a folder")
    return {"root": root, "outside": outside}


@pytest.fixture(scope="module")
def server(folders):
    with ServerThread(prefix_roots=(str(folders["root"]),)) as running:
        yield running


def _load(server, name: str, path: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/prefixes", json={"name": name, "path": path}, timeout=TIMEOUT)


def _models(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.url}/v1/models", timeout=TIMEOUT).json()["data"]]


def test_loading_and_unloading_are_off_unless_the_operator_names_a_prefix_root(folders):
    with ServerThread() as closed:
        for reply in (_load(closed, "c", str(folders["root"] / "saved")),
                      httpx.delete(f"{closed.url}/v1/prefixes/a", timeout=TIMEOUT)):  # fmt: skip
            assert reply.status_code == 403, reply.text
            error = reply.json()["error"]
            assert "--prefix-root" in error["message"] and error["code"] == "runtime_loading_disabled"
        assert _models(closed) == [BASE, "a", "b"]


def test_a_prefix_under_the_root_loads_by_absolute_or_relative_path(server, folders):
    for name, path in (("c", str(folders["root"] / "saved")), ("d", "saved"), ("e", "./empty/../saved")):
        reply = _load(server, name, path)
        assert reply.status_code == 200, reply.text
    body = {"model": "d", "prompt": "w5 w6", "max_tokens": 4, "temperature": 0}
    reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=TIMEOUT).json()
    assert reply["choices"][0]["text"] == solo_text(server.reference, server.tokenizer, "a", "w5 w6", 4)
    for name in ("c", "d", "e"):
        assert httpx.delete(f"{server.url}/v1/prefixes/{name}", timeout=TIMEOUT).status_code == 200


def test_every_path_that_cannot_be_loaded_gets_one_answer(server, folders):
    """Missing, outside the root (directly, by `..` or by a symlink), not a prefix folder, unreadable:
    one status and one message, which name only the path the client gave."""
    outside = folders["outside"] / "secret"
    paths = ["nothing", str(folders["root"] / "nothing"), str(outside), "../outside/secret", "link",
             "empty", "file", "/etc", "/", "a\x00b"]  # fmt: skip
    if os.geteuid() != 0:  # root reads everything
        locked = folders["root"] / "locked"
        locked.mkdir(exist_ok=True)
        paths.append("locked")
    answers = set()
    for path in paths:
        reply = _load(server, "x", path)
        error = reply.json()["error"]
        answers.add((reply.status_code, error["message"].replace(repr(path), "PATH"), error["code"]))
    assert len(answers) == 1, answers
    status, message, code = answers.pop()
    assert status == 400 and code == "prefix_not_found" and "--prefix-root" in message
    assert str(folders["root"]) not in message and "x" not in _models(server)


def test_a_prefix_with_a_task_head_is_refused_before_the_shared_model_changes(server, folders):
    """A saved head would overwrite the base model's lm_head, and with it every model's answers."""
    folder = folders["root"] / "with_head"
    server.reference.save(folder, name="a")
    head = server.reference.base.lm_head.weight
    save_file({"lm_head.weight": torch.zeros_like(head)}, str(folder / "head.safetensors"))
    before = server.model.base.lm_head.weight.clone()
    reply = _load(server, "h", "with_head")
    assert reply.status_code == 400 and "task head" in reply.json()["error"]["message"]
    assert "h" not in _models(server)
    assert torch.equal(server.model.base.lm_head.weight, before)
    body = {"model": BASE, "prompt": "w5 w6", "max_tokens": 4, "temperature": 0}
    reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=TIMEOUT).json()
    assert reply["choices"][0]["text"] == solo_text(server.reference, server.tokenizer, None, "w5 w6", 4)


@pytest.mark.parametrize(
    "name", ["a/b", "../a", ".hidden", "v1.2", "a b", "a=b", "a%2Fb", "", "x" * 65, "é", "train", "keys"]
)
def test_names_that_cannot_round_trip_are_refused(server, name):
    reply = _load(server, name, "saved")
    assert reply.status_code == 400, reply.text
    assert "not allowed" in reply.json()["error"]["message"] and reply.json()["error"]["param"] == "name"
    assert _models(server) == [BASE, "a", "b"]


def test_the_longest_allowed_name_loads_and_unloads(server):
    name = "A" + "b-_9" * 15 + "xyz"
    assert len(name) == 64
    assert _load(server, name, "saved").status_code == 200
    assert httpx.delete(f"{server.url}/v1/prefixes/{name}", timeout=TIMEOUT).status_code == 200


def test_roots_are_checked_and_resolved(folders, tmp_path):
    with pytest.raises(PrefixTuneError, match="no such folder"):
        resolve_roots([tmp_path / "missing"])
    roots = resolve_roots([folders["root"], str(tmp_path)])
    assert find_prefix_folder("saved", roots) == (folders["root"] / "saved").resolve()
    with pytest.raises(NotAllowed):
        find_prefix_folder("link", roots)  # a symlink out of the roots
