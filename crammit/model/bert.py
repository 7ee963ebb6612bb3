"""The crammed BERT (Geiping & Goldstein 2022, final architecture), one class per concept.

Pre-norm blocks without biases, gated-GELU FFN, scaled sinusoidal positions, a final
LayerNorm, tied embeddings, and an MLM head that decodes only the masked positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from crammit.config import ModelConfig

IGNORE_INDEX = -100  # label of positions that are not predicted


class ScaledSinusoidalPositions(nn.Module):
    """Fixed sinusoids times one learned scalar, initialised to 1/sqrt(dim)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("table", torch.empty(max_len, dim), persistent=False)
        # Shape (1,), not a 0-d scalar: DeepSpeed broadcasts parameters as byte views.
        self.scale = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill the table and the scale. Loading an export, Hugging Face calls this again: the
        table is built on the meta device and never saved, and the scale it read is kept
        (its guard makes `nn.init` skip loaded tensors)."""
        max_len, dim = self.table.shape
        position = torch.arange(max_len, dtype=torch.float32, device=self.table.device).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=self.table.device)
                              * (-math.log(10000.0) / dim))
        self.table[:, 0::2] = torch.sin(position * frequency)
        self.table[:, 1::2] = torch.cos(position * frequency)
        nn.init.constant_(self.scale, 1.0 / math.sqrt(dim))

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.scale * self.table[:seq_len]


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions = ScaledSinusoidalPositions(config.hidden_size, config.seq_len)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(input_ids)
        # The sinusoid table is a buffer, which bf16 engines leave in fp32.
        return self.norm(tokens + self.positions(input_ids.shape[1]).to(tokens.dtype))


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq_len, hidden = x.shape
        q, k, v = (
            part.view(batch, seq_len, self.num_heads, hidden // self.num_heads).transpose(1, 2)
            for part in self.qkv(x).split(hidden, dim=-1)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, hidden))


class GatedFFN(nn.Module):
    """GEGLU: one up-projection makes a gate and a value; GELU(gate) scales the value
    elementwise, and the down-projection maps the product back to the hidden size."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size // 2, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * value)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attention = SelfAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.ffn = GatedFFN(config)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), attention_mask)
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    """The block stack and the final LayerNorm: the part worth `torch.compile`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.final_norm(x)


class CrammedBert(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)

    def encode(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (batch, seq, hidden); padding_mask is True at real tokens."""
        attention_mask = None if padding_mask is None else padding_mask[:, None, None, :]
        return self.encoder(self.embeddings(input_ids), attention_mask)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse MLM: the tied decoder and the loss run only where labels are not ignored.

        Returns the summed cross-entropy over masked positions; callers normalise, so data
        parallel workers can divide by the global masked-token count.
        """
        hidden = self.encode(input_ids)
        predicted = labels != IGNORE_INDEX
        return F.cross_entropy(self.decode(hidden[predicted]).float(), labels[predicted], reduction="sum")

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token logits of hidden states, through the tied embedding."""
        return hidden @ self.embeddings.tokens.weight.T

    def compile_blocks(self) -> None:
        """Compile the block stack, the part worth compiling."""
        self.encoder.compile()

    def num_parameters(self) -> int:
        """Distinct parameters (the tied decoder counts once)."""
        return sum(p.numel() for p in self.parameters())
