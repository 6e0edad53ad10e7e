"""Graph fragments of composite ``torch.nn`` blocks that ``torch.fx`` cannot trace through.

``nn.TransformerEncoderLayer`` branches on tensor properties in its fast path, so
it is kept as a leaf during tracing and rebuilt here from the handlers of its
parts (attention, Linear, LayerNorm, residual additions), following its
``norm_first`` flag.
"""

from __future__ import annotations

from torch import nn

from fms_lightning.weightspace import layers, ops
from fms_lightning.weightspace.trace import Stream


def _sub(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _linear(ctx: layers.Context, path: str, x: object) -> Stream:
    return layers.linear(ctx, path, ctx.get(path, "weight"), ctx.get(path, "bias"), x)  # type: ignore[arg-type]


def transformer_encoder_layer(ctx: layers.Context, path: str, mod: nn.TransformerEncoderLayer, x: object) -> object:
    """``x + SA(LN(x))`` then ``x + FF(LN(x))`` (``norm_first``), or the post-norm order."""

    def attn(h: object) -> object:
        return layers.attention(ctx, _sub(path, "self_attn"), mod.self_attn, h, h, h)

    def ff(h: object) -> object:
        return _linear(ctx, _sub(path, "linear2"), _linear(ctx, _sub(path, "linear1"), h))

    def ln(name: str, h: object) -> object:
        return layers.norm(ctx, _sub(path, name), getattr(mod, name), h)

    def add(a: object, b: object) -> object:
        return ops.combine(ctx, [a, b], "add", f"residual in '{path}'")

    if mod.norm_first:
        x = add(x, attn(ln("norm1", x)))
        return add(x, ff(ln("norm2", x)))
    x = ln("norm1", add(x, attn(x)))
    return ln("norm2", add(x, ff(x)))


def transformer_encoder(ctx: layers.Context, path: str, mod: nn.TransformerEncoder, x: object) -> object:
    """A stack of encoder layers and the optional final norm."""
    for i, layer in enumerate(mod.layers):
        x = transformer_encoder_layer(ctx, _sub(path, f"layers.{i}"), layer, x)
    if mod.norm is not None:
        x = layers.norm(ctx, _sub(path, "norm"), mod.norm, x)
    return x
