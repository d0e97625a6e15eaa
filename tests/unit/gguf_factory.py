"""Tiny GGUF files for tests: random Llama/Qwen2 weights and small trained vocabularies.

Weights are made in Hugging Face layout first and written the way llama.cpp's converter
writes them (Q/K rows permuted for arch "llama"), so tests can compare an import with the
original HF tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = "<think>"
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                 " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!",
    "In 2024 there were 12345 models and 678 of them were tiny. Numbers: 3.14159, 2718.",
    "def forward(self, x):\n    return self.linear(x) + x  # residual\n",
    "Héllo wörld — naïve café. Ünïcödé text, 東京 and emoji 🙂 too.",
    "the theory of the thing is that they think these then there",
] * 4


@dataclass
class TinySpec:
    """Shape and content of one tiny GGUF model."""

    arch: str = "llama"                     # "llama" | "qwen2"
    qtype: str = "F32"                      # GGML type for 2-D weights: F32 | F16 | Q8_0 | Q4_0 ...
    tied: bool = False                      # omit output.weight
    pre: str = "smollm"                     # tokenizer.ggml.pre
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    layers: int = 2
    vocab_size: int = 320
    seed: int = 0
    extra_kv: dict[str, Any] = field(default_factory=dict)   # more metadata, e.g. rope scaling keys
    extra_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    raw_overrides: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF name -> array written instead


def train_byte_level(pre: str, vocab_size: int) -> Tokenizer:
    """A real byte-level BPE tokenizer trained on CORPUS, pre-tokenized the way `pre` names."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if pre == "smollm" else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([USER_DEFINED])
    return tok


def hf_weights(spec: TinySpec) -> dict[str, np.ndarray]:
    """Random float32 weights under HF names (biases for Qwen2)."""
    rng = np.random.default_rng(spec.seed)
    d, hd = spec.hidden, spec.hidden // spec.heads

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    out = {"model.embed_tokens.weight": w(spec.vocab_size, d),
           "model.norm.weight": 1 + w(d)}
    if not spec.tied:
        out["lm_head.weight"] = w(spec.vocab_size, d)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": 1 + w(d), p + "post_attention_layernorm.weight": 1 + w(d),
                p + "self_attn.q_proj.weight": w(spec.heads * hd, d),
                p + "self_attn.k_proj.weight": w(spec.kv_heads * hd, d),
                p + "self_attn.v_proj.weight": w(spec.kv_heads * hd, d),
                p + "self_attn.o_proj.weight": w(d, spec.heads * hd),
                p + "mlp.gate_proj.weight": w(spec.intermediate, d),
                p + "mlp.up_proj.weight": w(spec.intermediate, d),
                p + "mlp.down_proj.weight": w(d, spec.intermediate)}
        if spec.arch == "qwen2":
            out |= {p + "self_attn.q_proj.bias": w(spec.heads * hd), p + "self_attn.k_proj.bias": w(spec.kv_heads * hd),
                    p + "self_attn.v_proj.bias": w(spec.kv_heads * hd)}
    return out


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows of arch "llama" (rotate-half -> interleaved)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_NAMES[module]}.{kind}"


def write_tiny_gguf(path: Path, spec: TinySpec | None = None) -> dict[str, np.ndarray]:
    """Write a tiny GGUF model to `path`; returns the HF-layout float32 weights it was made from."""
    spec = spec or TinySpec()
    tok = train_byte_level(spec.pre, spec.vocab_size - 1)
    spec.vocab_size = tok.get_vocab_size()
    weights = hf_weights(spec)
    writer = GGUFWriter(str(path), spec.arch)
    _write_metadata(writer, spec, tok)
    for name, array in weights.items():
        _add_tensor(writer, spec, name, array)
    for name, array in spec.extra_tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def _add_tensor(writer: GGUFWriter, spec: TinySpec, name: str, array: np.ndarray) -> None:
    if spec.arch == "llama" and ".q_proj." in name:
        array = llama_cpp_permute(array, spec.heads)
    elif spec.arch == "llama" and ".k_proj." in name:
        array = llama_cpp_permute(array, spec.kv_heads)
    qtype = GGMLQuantizationType[spec.qtype]
    if gguf_name(name) in spec.raw_overrides:
        writer.add_tensor(gguf_name(name), spec.raw_overrides[gguf_name(name)])
    elif array.ndim == 1 or qtype == GGMLQuantizationType.F32:  # llama.cpp keeps norms and biases in F32
        writer.add_tensor(gguf_name(name), array)
    elif qtype == GGMLQuantizationType.F16:
        writer.add_tensor(gguf_name(name), array.astype(np.float16))
    elif qtype.name in _K_SCALE_BYTES:
        writer.add_tensor(gguf_name(name), random_k_blocks(array.shape, qtype, spec.seed), raw_dtype=qtype)
    else:
        writer.add_tensor(gguf_name(name), quantize(array, qtype), raw_dtype=qtype)


# K-quants: numpy can only dequantize them, so tests write random blocks whose float16
# super-block scales (byte offsets below) are set to small finite values.
_K_SCALE_BYTES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_k_blocks(shape: tuple[int, ...], qtype: GGMLQuantizationType, seed: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    rng = np.random.default_rng(seed + cols)
    blocks = rng.integers(0, 256, (rows, cols // block_size, type_size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(2e-4).tobytes(), dtype=np.uint8)
    for offset in _K_SCALE_BYTES[qtype.name]:
        blocks[:, :, offset:offset + 2] = scale
    return blocks.reshape(rows, -1)


def _write_metadata(writer: GGUFWriter, spec: TinySpec, tok: Tokenizer) -> None:
    a = spec.arch
    writer.add_string("general.name", f"tiny {a}")
    for key, value in {"block_count": spec.layers, "context_length": 256, "embedding_length": spec.hidden,
                       "feed_forward_length": spec.intermediate, "attention.head_count": spec.heads,
                       "attention.head_count_kv": spec.kv_heads}.items():
        writer.add_uint32(f"{a}.{key}", value)
    writer.add_float32(f"{a}.rope.freq_base", 10000.0)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    if a == "llama":
        writer.add_uint32(f"{a}.rope.dimension_count", spec.hidden // spec.heads)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    types = [3 if t in SPECIALS else 4 if t == USER_DEFINED else 1 for t in tokens]
    merges = _merges(tok)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", spec.pre)
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.token_type", types)
    writer.add_array("tokenizer.ggml.merges", merges)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_uint32("tokenizer.ggml.padding_token_id", 2)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("tokenizer.chat_template", CHAT_TEMPLATE)
    for key, value in spec.extra_kv.items():
        _add_value(writer, key, value)


def _merges(tok: Tokenizer) -> list[str]:
    import json
    model = json.loads(tok.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def _add_value(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_array(key, value)
