"""Vision Transformer whose parameter names match the DINO/timm releases.

The names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.norm1`` /
``attn.qkv`` / ``attn.proj`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, ``norm``) are kept so the
official DINO ViT checkpoints load one to one; the code itself is our own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropPath", "VisionTransformer", "trunc_normal_", "vit_base", "vit_small", "vit_tiny"]


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Normal(0, std) truncated at +-2 std, the usual ViT initialisation.

    Rejection sampling (redraw the ~5% outliers) instead of ``nn.init.trunc_normal_``, whose
    inverse-CDF sampling is about 20x slower on CPU (seconds for a ViT-B).
    """
    with torch.no_grad():
        tensor.normal_(0.0, std)
        if tensor.is_meta:
            return tensor
        flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
        idx = (flat.abs() > 2 * std).nonzero().squeeze(1)
        while idx.numel():
            redraw = flat.new_empty(idx.numel()).normal_(0.0, std)
            flat[idx] = redraw
            idx = idx[redraw.abs() > 2 * std]
        if flat.data_ptr() != tensor.data_ptr():
            tensor.copy_(flat.view_as(tensor))
    return tensor


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, only while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        # One Bernoulli draw per sample, broadcast over the remaining dims; rescale to keep E[x].
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution (``proj``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention on top of ``scaled_dot_product_attention`` (fused kernels)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """Two-layer GELU feed-forward block (``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block; drop path applies to both residual branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        eps: float,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT backbone; ``forward`` returns the normalised CLS token (``embed_dim`` features).

    ``img_size`` only fixes the stored position-embedding grid (224 for the DINO checkpoints);
    any other input size works through bicubic resampling of that grid.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # Deeper blocks are dropped more often: rate grows linearly from 0 to drop_path_rate.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, r, norm_eps)
            for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, h_patches: int, w_patches: int) -> torch.Tensor:
        """Position embeddings for an ``h_patches x w_patches`` grid (bicubic if it differs)."""
        n_stored = self.pos_embed.shape[1] - 1
        if h_patches * w_patches == n_stored and h_patches == w_patches:
            return self.pos_embed
        side = math.isqrt(n_stored)
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # As DINO: scale_factor (n + 0.1) / side (the 0.1 avoids floating-point floor errors),
        # which sets the resampling grid from the factor, not from the output size.
        grid = F.interpolate(
            grid.float(),
            scale_factor=((h_patches + 0.1) / side, (w_patches + 0.1) / side),
            mode="bicubic",
            align_corners=False,
        ).to(patch_pos.dtype)
        assert grid.shape[-2:] == (h_patches, w_patches), grid.shape
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h_patches * w_patches, -1)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify, prepend CLS and add (resampled) position embeddings."""
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        pos = self.interpolate_pos_encoding(h // self.patch_size, w // self.patch_size)
        return self.pos_drop(tokens + pos)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, (B, 1 + N, D); index 0 is CLS."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]


def vit_tiny(patch_size: int = 16, drop_path_rate: float = 0.0, **kwargs) -> VisionTransformer:
    """ViT-Ti: 192-d, 12 blocks, 3 heads."""
    return VisionTransformer(
        patch_size=patch_size,
        embed_dim=192,
        depth=12,
        num_heads=3,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )


def vit_small(patch_size: int = 16, drop_path_rate: float = 0.0, **kwargs) -> VisionTransformer:
    """ViT-S (DeiT-S): 384-d, 12 blocks, 6 heads; the Daino backbone."""
    return VisionTransformer(
        patch_size=patch_size,
        embed_dim=384,
        depth=12,
        num_heads=6,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )


def vit_base(patch_size: int = 16, drop_path_rate: float = 0.0, **kwargs) -> VisionTransformer:
    """ViT-B: 768-d, 12 blocks, 12 heads."""
    return VisionTransformer(
        patch_size=patch_size,
        embed_dim=768,
        depth=12,
        num_heads=12,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
