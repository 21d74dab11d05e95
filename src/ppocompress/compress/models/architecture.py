"""One view of every supported family: where a layer's attention and MLP weights are,
how many heads, KV groups and neurons it has, and how to cut them physically.

Attention is pruned in *groups*: a group is one key/value head together with the query
heads that share it. In multi-head attention (BERT, GPT-2, Llama without GQA) a group
is simply one head; with grouped-query attention, removing a group keeps the
query-to-KV mapping valid without touching the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention
from transformers.pytorch_utils import Conv1D

from ppocompress.errors import UserError

TABLE_SEQ_LEN = 128  # the sequence length a layer table counts attention FLOPs at, unless told otherwise


@dataclass
class LayerInfo:
    """One row of the layer table."""

    index: int
    heads: int  # query heads
    kv_heads: int  # = attention groups
    head_dim: int
    ffn: int  # FFN neurons
    params: int
    flops_per_token: int  # multiply-adds x 2, at the table's sequence length

    def to_dict(self) -> dict:
        return asdict(self)


def slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear keeping rows (dim=0: outputs) or columns (dim=1: inputs) at index."""
    weight = layer.weight.detach().index_select(dim, index).clone()
    bias = None if layer.bias is None else (layer.bias.detach()[index].clone() if dim == 0 else layer.bias.detach().clone())
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def slice_conv1d(layer: Conv1D, index: torch.Tensor, dim: int) -> Conv1D:
    """GPT-2's Conv1D stores weight as [in, out]; dim=0 keeps outputs, dim=1 keeps inputs."""
    weight = layer.weight.detach().index_select(1 - dim, index).clone()
    bias = layer.bias.detach()[index].clone() if dim == 0 else layer.bias.detach().clone()
    new = Conv1D(weight.shape[1], weight.shape[0])
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


def _head_index(groups: list[int], group_width: int) -> torch.Tensor:
    """Feature indices of whole groups (each group_width features wide)."""
    return torch.tensor([g * group_width + i for g in groups for i in range(group_width)], dtype=torch.long)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """A projection's weight; int8 Linear layers expose it through a method."""
    return module.weight() if callable(module.weight) else module.weight


def _linear_flops(module: nn.Module) -> int:
    return 2 * weight_matrix(module).numel()


class FamilyAdapter:
    """Base class: subclasses say where things are; the shared logic lives here."""

    gated_mlp = False

    def base(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layers(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def head_dim(self, model: nn.Module) -> int:
        raise NotImplementedError

    def query_heads(self, layer: nn.Module, head_dim: int) -> int:
        raise NotImplementedError

    def kv_heads(self, layer: nn.Module, head_dim: int) -> int:
        return self.query_heads(layer, head_dim)

    def attention_output(self, layer: nn.Module) -> nn.Module:
        """The projection that maps concatenated heads back to the hidden size."""
        raise NotImplementedError

    def ffn_output(self, layer: nn.Module) -> nn.Module:
        """The projection that maps FFN neurons back to the hidden size."""
        raise NotImplementedError

    def ffn_width(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def attention_output_columns(self, layer: nn.Module, keep_groups: list[int], head_dim: int) -> torch.Tensor:
        """The input features of the attention output projection that kept groups feed
        (a group's query heads are contiguous)."""
        group_size = self.query_heads(layer, head_dim) // self.kv_heads(layer, head_dim)
        return _head_index(keep_groups, group_size * head_dim)

    def prune_attention(self, layer: nn.Module, keep_groups: list[int], head_dim: int) -> None:
        raise NotImplementedError

    def prune_ffn(self, layer: nn.Module, keep: list[int]) -> None:
        raise NotImplementedError

    def attention_modules(self, layer: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def ffn_modules(self, layer: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def set_num_layers(self, model: nn.Module, kept: list[int]) -> None:
        """Bookkeeping after layers were removed: decoders index their KV cache by each
        attention module's layer_idx, and some read per-layer config lists."""
        for i, layer in enumerate(self.layers(model)):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = i
        config = model.config
        config.num_hidden_layers = len(kept)  # Llama's forward reads layers[:num_hidden_layers]
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in kept]

    # --- shared -----------------------------------------------------------------
    def drop_layers(self, model: nn.Module, drop: list[int]) -> None:
        layers = self.layers(model)
        kept = [i for i in range(len(layers)) if i not in set(drop)]
        if not kept:
            raise UserError("a plan cannot drop every layer; keep at least one")
        for i in sorted(drop, reverse=True):
            del layers[i]
        self.set_num_layers(model, kept)

    def layer_table(self, model: nn.Module, seq_len: int = TABLE_SEQ_LEN) -> list[LayerInfo]:
        head_dim = self.head_dim(model)
        table = []
        for i, layer in enumerate(self.layers(model)):
            heads = self.query_heads(layer, head_dim)
            linear_flops = sum(_linear_flops(m) for m in self.attention_modules(layer) + self.ffn_modules(layer))
            # scores Q K^T and the weighted sum A V: 2 x (heads x head_dim) multiply-adds per key position.
            attention_flops = 2 * 2 * seq_len * heads * head_dim
            table.append(
                LayerInfo(
                    index=i,
                    heads=heads,
                    kv_heads=self.kv_heads(layer, head_dim),
                    head_dim=head_dim,
                    ffn=self.ffn_width(layer),
                    params=sum(p.numel() for p in layer.parameters())
                    + sum(weight_matrix(m).numel() for m in layer.modules() if callable(getattr(m, "weight", None))),
                    flops_per_token=linear_flops + attention_flops,
                )
            )
        return table


class BertAdapter(FamilyAdapter):
    """BERT, MiniLM, RoBERTa: encoder.layer[i].attention.self.{query,key,value}, ...output.dense."""

    def base(self, model):
        for name in ("bert", "roberta"):
            if hasattr(model, name):
                return getattr(model, name)
        return model

    def layers(self, model):
        return self.base(model).encoder.layer

    def head_dim(self, model):
        return model.config.hidden_size // model.config.num_attention_heads

    def query_heads(self, layer, head_dim):
        return layer.attention.self.query.out_features // head_dim

    def attention_output(self, layer):
        return layer.attention.output.dense

    def ffn_output(self, layer):
        return layer.output.dense

    def ffn_width(self, layer):
        return layer.intermediate.dense.out_features

    def attention_modules(self, layer):
        sa = layer.attention.self
        return [sa.query, sa.key, sa.value, layer.attention.output.dense]

    def ffn_modules(self, layer):
        return [layer.intermediate.dense, layer.output.dense]

    def prune_attention(self, layer, keep_groups, head_dim):
        sa = layer.attention.self
        index = _head_index(keep_groups, head_dim)
        sa.query, sa.key, sa.value = (slice_linear(m, index, 0) for m in (sa.query, sa.key, sa.value))
        layer.attention.output.dense = slice_linear(layer.attention.output.dense, index, 1)
        # The forward pass infers the head count from the widths; keep the attributes truthful.
        sa.num_attention_heads = len(keep_groups)
        sa.all_head_size = len(index)

    def prune_ffn(self, layer, keep):
        index = torch.tensor(keep, dtype=torch.long)
        layer.intermediate.dense = slice_linear(layer.intermediate.dense, index, 0)
        layer.output.dense = slice_linear(layer.output.dense, index, 1)


class KeptHeadsSelfAttention(MPNetSelfAttention):
    """MPNet self-attention after some heads were removed. MPNet's encoder computes the
    relative position bias once, one slice per head of the dense model, and hands the same
    bias to every layer; this layer adds only its kept heads' slices. kept_heads is a buffer,
    so it is saved with the weights and traced into an exported graph as a constant Gather."""

    kept_heads: torch.Tensor

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        if position_bias is not None:  # (batch, dense heads, query, key)
            position_bias = position_bias.index_select(1, self.kept_heads)
        return super().forward(hidden_states, attention_mask, position_bias, output_attentions, **kwargs)


def keep_heads_(attention: MPNetSelfAttention, keep: list[int]) -> None:
    """Makes `attention` add only the position bias of the heads `keep` (indices among its
    current heads), in place; an already pruned layer composes the two selections."""
    index = torch.tensor(keep, dtype=torch.long)
    if isinstance(attention, KeptHeadsSelfAttention):
        index = attention.kept_heads[index]
    attention.__class__ = KeptHeadsSelfAttention  # same module and parameter names, so saved files keep theirs
    attention.register_buffer("kept_heads", index)


class MPNetAdapter(BertAdapter):
    """MPNet (all-mpnet-base-v2): encoder.layer[i].attention.attn.{q,k,v,o}; the FFN is
    BERT's. Every layer adds the encoder's relative position bias to its attention scores,
    so a layer that loses heads keeps their bias out too (KeptHeadsSelfAttention)."""

    def base(self, model):
        return getattr(model, "mpnet", model)

    def query_heads(self, layer, head_dim):
        return layer.attention.attn.q.out_features // head_dim

    def attention_output(self, layer):
        return layer.attention.attn.o

    def attention_modules(self, layer):
        attn = layer.attention.attn
        return [attn.q, attn.k, attn.v, attn.o]

    def prune_attention(self, layer, keep_groups, head_dim):
        attn = layer.attention.attn
        index = _head_index(keep_groups, head_dim)
        attn.q, attn.k, attn.v = (slice_linear(m, index, 0) for m in (attn.q, attn.k, attn.v))
        attn.o = slice_linear(attn.o, index, 1)
        attn.num_attention_heads = len(keep_groups)
        attn.all_head_size = len(index)  # read by forward to merge the heads
        keep_heads_(attn, keep_groups)


class GPT2Adapter(FamilyAdapter):
    """GPT-2: h[i].attn.c_attn (q|k|v fused, Conv1D [in, 3E]), attn.c_proj, mlp.c_fc, mlp.c_proj."""

    def base(self, model):
        return model.transformer if hasattr(model, "transformer") else model

    def layers(self, model):
        return self.base(model).h

    def head_dim(self, model):
        return model.config.n_embd // model.config.n_head

    def query_heads(self, layer, head_dim):
        return layer.attn.split_size // head_dim

    def attention_output(self, layer):
        return layer.attn.c_proj

    def ffn_output(self, layer):
        return layer.mlp.c_proj

    def ffn_width(self, layer):
        return layer.mlp.c_fc.nf

    def attention_modules(self, layer):
        return [layer.attn.c_attn, layer.attn.c_proj]

    def ffn_modules(self, layer):
        return [layer.mlp.c_fc, layer.mlp.c_proj]

    def prune_attention(self, layer, keep_groups, head_dim):
        attn = layer.attn
        width = attn.split_size
        index = _head_index(keep_groups, head_dim)
        qkv = torch.cat([index, index + width, index + 2 * width])
        attn.c_attn = slice_conv1d(attn.c_attn, qkv, 0)
        attn.c_proj = slice_conv1d(attn.c_proj, index, 1)
        attn.split_size = len(index)  # read by forward to split q|k|v
        attn.num_heads = len(keep_groups)
        attn.embed_dim = len(index)

    def prune_ffn(self, layer, keep):
        index = torch.tensor(keep, dtype=torch.long)
        layer.mlp.c_fc = slice_conv1d(layer.mlp.c_fc, index, 0)
        layer.mlp.c_proj = slice_conv1d(layer.mlp.c_proj, index, 1)


class LlamaAdapter(FamilyAdapter):
    """Llama, Qwen2, Mistral: self_attn.{q,k,v,o}_proj with grouped-query attention, and a
    gated MLP (gate_proj, up_proj -> down_proj)."""

    gated_mlp = True

    def base(self, model):
        return model.model if hasattr(model, "model") else model

    def layers(self, model):
        return self.base(model).layers

    def head_dim(self, model):
        config = model.config
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def query_heads(self, layer, head_dim):
        return layer.self_attn.q_proj.out_features // head_dim

    def kv_heads(self, layer, head_dim):
        return layer.self_attn.k_proj.out_features // head_dim

    def attention_output(self, layer):
        return layer.self_attn.o_proj

    def ffn_output(self, layer):
        return layer.mlp.down_proj

    def ffn_width(self, layer):
        return layer.mlp.up_proj.out_features

    def attention_modules(self, layer):
        a = layer.self_attn
        return [a.q_proj, a.k_proj, a.v_proj, a.o_proj]

    def ffn_modules(self, layer):
        return [layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]

    def prune_attention(self, layer, keep_groups, head_dim):
        attn = layer.self_attn
        group_size = self.query_heads(layer, head_dim) // self.kv_heads(layer, head_dim)
        query_index = self.attention_output_columns(layer, keep_groups, head_dim)
        kv_index = _head_index(keep_groups, head_dim)
        attn.q_proj = slice_linear(attn.q_proj, query_index, 0)
        attn.k_proj = slice_linear(attn.k_proj, kv_index, 0)
        attn.v_proj = slice_linear(attn.v_proj, kv_index, 0)
        attn.o_proj = slice_linear(attn.o_proj, query_index, 1)
        attn.num_key_value_groups = group_size  # unchanged ratio, set for clarity

    def prune_ffn(self, layer, keep):
        index = torch.tensor(keep, dtype=torch.long)
        mlp = layer.mlp
        mlp.gate_proj = slice_linear(mlp.gate_proj, index, 0)
        mlp.up_proj = slice_linear(mlp.up_proj, index, 0)
        mlp.down_proj = slice_linear(mlp.down_proj, index, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)
