"""The Llama family in one implementation: Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2.

RMSNorm, rotary embeddings (default, linear, llama3 scaling), grouped-query attention over a
paged KV cache, SwiGLU MLP, tied or untied embeddings, optional q/k/v bias (Qwen2).
Q/K/V and gate/up projections are fused into one matmul each.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from llmops.layers.attention import paged_attention
from llmops.layers.attention_metadata import AttentionMetadata
from llmops.layers.linear import Linear
from llmops.layers.norm import rms_norm
from llmops.layers.rotary import RotaryEmbedding, apply_rotary
from llmops.models.arch import ArchConfig


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        h = cfg.hidden_size
        self.input_norm = nn.Parameter(torch.ones(h))
        self.post_attention_norm = nn.Parameter(torch.ones(h))
        self.qkv_proj = Linear(h, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(self.q_size, h, bias=False)
        self.gate_up_proj = Linear(h, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        """x: (N, hidden) -> (N, hidden)."""
        n = x.shape[0]
        hq, hkv = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(rms_norm(x, self.input_norm, self.eps)).view(n, hq + 2 * hkv, self.head_dim)
        qk = apply_rotary(qkv[:, :hq + hkv], cos, sin)                      # (N, Hq + Hkv, D)
        q, k, v = qk[:, :hq], qk[:, hq:], qkv[:, hq + hkv:]
        attn = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale)
        x = x + self.o_proj(attn.reshape(n, self.q_size))
        gate, up = self.gate_up_proj(rms_norm(x, self.post_attention_norm, self.eps)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


class LlamaForCausalLM(nn.Module):
    """forward(token ids, positions, attention metadata, caches) -> hidden; logits(hidden) -> logits."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # _weight skips the random init (it would be overwritten, and costs seconds on meta tensors).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.rotary: RotaryEmbedding | None = None   # set by init_rotary() once weights are in place
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: (N,) -> final hidden states (N, hidden), already normed."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.tables(positions, x.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, cos, sin, kv_cache, meta)
        return rms_norm(x, self.norm, self.cfg.rms_norm_eps)

    def init_rotary(self, max_positions: int, device: torch.device) -> None:
        """Build the float32 cos/sin tables (after any dtype change, so they stay float32)."""
        cfg = self.cfg
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling).to(device)

    def prepare_int4(self) -> int:
        """Keep exact 4-bit copies of the float32 linear weights that sit on a 4-bit grid; returns how many."""
        return sum(m.prepare_int4() for m in self.modules() if isinstance(m, Linear))

    def pack_weights(self) -> None:
        """Pre-pack every linear layer for the CPU matmul library (after dtype conversion)."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()

    def weight_bytes(self) -> int:
        """Bytes of weights held, packed copies included (a tied embedding counts once)."""
        tensors = {id(p): p for p in self.parameters()}
        for m in self.modules():
            if isinstance(m, Linear):
                extra = [m.packed] + ([m.int4.packed, m.int4.scales_and_zeros] if m.int4 else [])
                tensors.update({id(t): t for t in extra if t is not None})
        return sum(t.numel() * t.element_size() for t in tensors.values())

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, hidden) -> (B, vocab) float32."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take Hugging Face tensor names; fuse q/k/v and gate/up as they arrive."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            if hf_name == "lm_head.weight" and self.cfg.tie_word_embeddings:
                continue  # tied: the embedding is the head
            target = _map_name(hf_name)
            if target is None:
                continue
            name, offset_key = target
            if name not in params:
                raise ValueError(f"checkpoint tensor {hf_name!r} does not fit this architecture")
            param = params[name]
            rows = self._rows(offset_key, param.shape[0])
            dest = param.data if rows is None else param.data[rows[0]:rows[1]]
            if dest.shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(dest.shape)}")
            dest.copy_(tensor)
            loaded.add(f"{name}:{offset_key}")
        self._check_complete(loaded)

    def _rows(self, key: str | None, total: int) -> tuple[int, int] | None:
        """Row range of a fused parameter that one checkpoint tensor fills."""
        if key is None:
            return None
        q, kv = self.cfg.num_attention_heads * self.cfg.head_dim, self.cfg.num_key_value_heads * self.cfg.head_dim
        inter = self.cfg.intermediate_size
        return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv),
                "gate": (0, inter), "up": (inter, 2 * inter)}[key]

    def _check_complete(self, loaded: set[str]) -> None:
        expected = {"embed_tokens.weight:None", "norm:None"}
        if not self.cfg.tie_word_embeddings:
            expected.add("lm_head.weight:None")
        for i in range(self.cfg.num_hidden_layers):
            p = f"layers.{i}."
            expected |= {f"{p}input_norm:None", f"{p}post_attention_norm:None", f"{p}o_proj.weight:None",
                         f"{p}down_proj.weight:None", f"{p}gate_up_proj.weight:gate", f"{p}gate_up_proj.weight:up"}
            expected |= {f"{p}qkv_proj.weight:{s}" for s in "qkv"}
            if self.cfg.attention_bias:
                expected |= {f"{p}qkv_proj.bias:{s}" for s in "qkv"}
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")


_LAYER_MAP = {
    "input_layernorm.weight": ("input_norm", None),
    "post_attention_layernorm.weight": ("post_attention_norm", None),
    "self_attn.q_proj.weight": ("qkv_proj.weight", "q"),
    "self_attn.k_proj.weight": ("qkv_proj.weight", "k"),
    "self_attn.v_proj.weight": ("qkv_proj.weight", "v"),
    "self_attn.q_proj.bias": ("qkv_proj.bias", "q"),
    "self_attn.k_proj.bias": ("qkv_proj.bias", "k"),
    "self_attn.v_proj.bias": ("qkv_proj.bias", "v"),
    "self_attn.o_proj.weight": ("o_proj.weight", None),
    "mlp.gate_proj.weight": ("gate_up_proj.weight", "gate"),
    "mlp.up_proj.weight": ("gate_up_proj.weight", "up"),
    "mlp.down_proj.weight": ("down_proj.weight", None),
}
_TOP_MAP = {
    "model.embed_tokens.weight": ("embed_tokens.weight", None),
    "model.norm.weight": ("norm", None),
    "lm_head.weight": ("lm_head.weight", None),
}


def _map_name(hf_name: str) -> tuple[str, str | None] | None:
    """HF tensor name -> (our parameter name, which slice of a fused parameter) or None to skip."""
    if hf_name in _TOP_MAP:
        return _TOP_MAP[hf_name]
    if hf_name.startswith("model.layers."):
        index, rest = hf_name[len("model.layers."):].split(".", 1)
        if rest in _LAYER_MAP:
            name, key = _LAYER_MAP[rest]
            return f"layers.{index}.{name}", key
    if "rotary_emb" in hf_name:
        return None
    raise ValueError(f"unexpected checkpoint tensor {hf_name!r}")
