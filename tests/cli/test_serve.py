"""`prefixtune serve`: options, bad arguments, and the command serving over HTTP in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_model
from safetensors.torch import save_file
from synthetic import word_tokenizer

from prefixtune import PrefixConfig, add_prefix
from prefixtune.cli import build_parser, main
from prefixtune.cli.options import dataclass_from_args
from prefixtune.cli.serve import parse_prefixes
from prefixtune.errors import PrefixTuneError
from prefixtune.serve import ServeConfig

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    base = make_model("llama")
    base.save_pretrained(root / "base")
    word_tokenizer().save_pretrained(root / "base")
    model = add_prefix(base, PrefixConfig(length=3, reparam="flat", seed=5))
    model.save(root / "e2e")
    model.save(root / "head")
    save_file(
        {"lm_head.weight": torch.zeros_like(base.lm_head.weight)}, str(root / "head" / "head.safetensors")
    )
    return {"base": root / "base", "e2e": root / "e2e", "head": root / "head"}


def test_the_server_listens_on_loopback_unless_told_otherwise():
    args = build_parser().parse_args(["serve"])
    assert dataclass_from_args(ServeConfig, args).host == "127.0.0.1"
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9", "--policy", "single"])
    config = dataclass_from_args(ServeConfig, args)
    assert (config.host, config.port, config.policy) == ("0.0.0.0", 9, "single")


def test_scheduling_is_continuous_unless_told_otherwise():
    config = dataclass_from_args(ServeConfig, build_parser().parse_args(["serve"]))
    assert (config.scheduling, config.max_cached_tokens) == ("continuous", 65536)
    args = ["serve", "--scheduling", "batch", "--max-cached-tokens", "4096"]
    config = dataclass_from_args(ServeConfig, build_parser().parse_args(args))
    assert (config.scheduling, config.max_cached_tokens) == ("batch", 4096)


def test_runtime_loading_is_off_and_the_body_limited_unless_told_otherwise():
    config = dataclass_from_args(ServeConfig, build_parser().parse_args(["serve"]))
    assert config.prefix_roots == () and config.max_body_bytes == 2 * 1024 * 1024
    args = ["serve", "--prefix-root", "runs", "--prefix-root", "more", "--max-body-bytes", "1000"]
    config = dataclass_from_args(ServeConfig, build_parser().parse_args(args))
    assert config.prefix_roots == ("runs", "more") and config.max_body_bytes == 1000


@pytest.mark.parametrize(
    ("name", "folder", "message"),
    [
        ("a/b", "e2e", "is not allowed"),
        (".x", "e2e", "is not allowed"),
        ("train", "e2e", "attribute"),
        ("clf", "head", "task head"),
    ],
)
def test_prefix_names_and_heads_are_checked_before_the_base_loads(folders, name, folder, message):
    with pytest.raises(PrefixTuneError, match=message):
        parse_prefixes([f"{name}={folders[folder]}"], "tiny")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prefix", "e2e"], "write it as NAME=PATH"),
        (["--prefix", "x=/nonexistent/prefix"], "no prefix folder at /nonexistent/prefix"),
        (["--prefix", "x={e2e}", "--prefix", "x={e2e}"], "used twice"),
        (["--policy", "random"], "policy='random' is not one of"),
        (["--max-batch", "0"], "max_batch must be at least 1"),
        (["--max-body-bytes", "0"], "max_body_bytes must be at least 1"),
        (["--prefix-root", "/nonexistent/root"], "--prefix-root /nonexistent/root: no such folder"),
    ],
)
def test_bad_arguments_fail_with_one_line_before_loading_anything(folders, capsys, extra, message):
    extra = [e.format(e2e=folders["e2e"]) for e in extra]
    assert main(["serve", "--base", str(folders["base"]), *extra]) == 2
    assert message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_serves_a_prefix_and_the_base_model(folders):
    port = _free_port()
    command = [sys.executable, "-m", "prefixtune", "serve", "--base", str(folders["base"]),
               "--base-name", "tiny", "--prefix", f"e2e={folders['e2e']}", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "PREFIXTUNE_API_KEY": "k3y"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k3y"}
    try:
        deadline = time.monotonic() + 300  # importing torch can take minutes on a loaded machine
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"{url}/health", headers=auth, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 401  # the key from the environment
        models = httpx.get(f"{url}/v1/models", headers=auth, timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["tiny", "e2e"]
        body = {"model": "e2e", "prompt": "w5 w6", "max_tokens": 3, "temperature": 0}
        reply = httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=60).json()
        assert len(reply["choices"][0]["text"].split(" ")) == 3
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
