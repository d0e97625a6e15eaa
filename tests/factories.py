"""Small factories for tests: tiny random-weight Hugging Face model folders of each variant,
with a byte-level tokenizer (256 byte tokens + a few specials), and engine requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

VOCAB = 300              # 256 byte tokens, then specials and spare ids
BOS_ID, EOS_ID = 256, 257

VARIANTS: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", tie_word_embeddings=False),
    "smollm2": dict(model_type="llama", tie_word_embeddings=True, num_key_value_heads=1, rope_theta=100000.0),
    "llama3": dict(model_type="llama", tie_word_embeddings=False, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "linear_rope": dict(model_type="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, use_sliding_window=False),
}


def hf_config(variant: str = "llama", **overrides: Any):
    """A tiny transformers config for one of VARIANTS."""
    from transformers import AutoConfig

    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=BOS_ID, eos_token_id=EOS_ID, rms_norm_eps=1e-6)
    base.update(VARIANTS[variant])
    base.update(overrides)
    model_type = base.pop("model_type")
    return AutoConfig.for_model(model_type, **base)


def make_model_folder(folder: Path, variant: str = "llama", seed: int = 0, **overrides: Any):
    """Write a random-weight HF model + tokenizer into `folder`; returns the transformers model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(variant, **overrides)).eval()
    with torch.no_grad():  # random init has tiny biases/norms: make every parameter matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    write_byte_tokenizer(folder)
    return model


def write_byte_tokenizer(folder: Path, chat_template: str | None = None) -> None:
    """A byte-level BPE tokenizer with no merges: token id = byte value; <s>=256, </s>=257."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    tok.save(str(folder / "tokenizer.json"))
    template = chat_template or (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "chat_template": template}))


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers greedy generation, EOS ignored: the oracle's tokens."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0, attention_mask=torch.ones_like(ids))
    return out[0, len(prompt_ids):].tolist()
