"""ViT backbone and DINO head: shapes, checkpoint naming, stochastic depth, frozen weight norm."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.models.dino_head import DINOHead, cancel_last_layer_gradients, dino_head_key_map
from common.models.vit import VisionTransformer, vit_base, vit_small, vit_tiny


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return vit_small().eval()


def official_vit_s16_shapes():
    """Key -> shape of the backbone in dino_deitsmall16_pretrain(_full_checkpoint).pth."""
    d, shapes = 384, {}
    shapes["cls_token"] = (1, 1, d)
    shapes["pos_embed"] = (1, 197, d)
    shapes["patch_embed.proj.weight"] = (d, 3, 16, 16)
    shapes["patch_embed.proj.bias"] = (d,)
    for i in range(12):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[b + norm + ".weight"] = shapes[b + norm + ".bias"] = (d,)
        shapes[b + "attn.qkv.weight"], shapes[b + "attn.qkv.bias"] = (3 * d, d), (3 * d,)
        shapes[b + "attn.proj.weight"], shapes[b + "attn.proj.bias"] = (d, d), (d,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (4 * d, d), (4 * d,)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (d, 4 * d), (d,)
    shapes["norm.weight"] = shapes["norm.bias"] = (d,)
    return shapes


def test_vit_small_state_dict_matches_official_layout(small):
    ours = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    assert ours == official_vit_s16_shapes()
    assert small.embed_dim == 384
    assert small.norm.eps == 1e-6 and small.blocks[0].attn.qkv.bias is not None


@pytest.mark.parametrize(
    "factory,dim,heads", [(vit_tiny, 192, 3), (vit_small, 384, 6), (vit_base, 768, 12)]
)
def test_factories(factory, dim, heads):
    with torch.device("meta"):  # shapes only, no memory or init cost
        model = factory()
    assert model.embed_dim == dim and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == heads
    assert model.blocks[0].mlp.fc1.out_features == 4 * dim


@pytest.mark.parametrize("size", [224, 96])
def test_vit_small_forward_shapes(small, size):
    with torch.no_grad():
        out = small(torch.randn(2, 3, size, size))
    assert out.shape == (2, 384) and torch.isfinite(out).all()


def test_vit_cifar_patch4_and_non_square():
    torch.manual_seed(0)
    model = vit_tiny(patch_size=4, img_size=32).eval()
    assert model.pos_embed.shape == (1, 65, 192)
    with torch.no_grad():
        assert model(torch.randn(3, 3, 32, 32)).shape == (3, 192)
        assert model(torch.randn(2, 3, 16, 24)).shape == (2, 192)  # resampled 4x6 grid
        assert model.forward_tokens(torch.randn(1, 3, 16, 16)).shape == (1, 17, 192)


def test_pos_embed_untouched_at_native_size_and_resampled_otherwise(small):
    assert small.interpolate_pos_encoding(14, 14) is small.pos_embed
    pos = small.interpolate_pos_encoding(6, 6)
    assert pos.shape == (1, 37, 384)
    assert torch.equal(pos[:, 0], small.pos_embed[:, 0])  # CLS position is never resampled


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = VisionTransformer(embed_dim=64, depth=1, num_heads=4).blocks[0].attn.eval()
    x = torch.randn(2, 5, 64)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 16).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-2, -1) / 16**0.5, dim=-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 64))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_drop_path_only_in_train_mode():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2,
                              drop_path_rate=0.5)  # fmt: skip
    rates = [blk.drop_path.drop_prob for blk in model.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])  # linear in depth
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    no_drop = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2)
    no_drop.load_state_dict(model.state_dict())
    torch.testing.assert_close(no_drop.train()(x), model.eval()(x))


def test_dino_head_shapes_and_norm_last_layer():
    torch.manual_seed(0)
    head = DINOHead(384, 100)
    x = torch.randn(4, 384)
    out = head(x)
    assert out.shape == (4, 100)
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.equal(gain, torch.ones(100, 1))
    assert out.abs().max() <= 1 + 1e-5  # unit-norm prototypes and embeddings: cosines
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [2048, 2048, 256]
    assert head.last_layer.bias is None
    out.sum().backward()
    assert gain.grad is None and head.last_layer.parametrizations.weight.original1.grad is not None

    free = DINOHead(384, 10, hidden_dim=32, bottleneck_dim=16, nlayers=2, use_bn=True,
                    norm_last_layer=False)  # fmt: skip
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert any(isinstance(m, nn.BatchNorm1d) for m in free.mlp)
    assert free(torch.randn(3, 384)).shape == (3, 10)
    assert DINOHead(8, 5, nlayers=1, bottleneck_dim=4)(torch.randn(2, 8)).shape == (2, 5)


def test_dino_head_loads_official_weight_norm_keys():
    torch.manual_seed(0)
    ref = DINOHead(16, 7, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    with torch.no_grad():
        ref.last_layer.parametrizations.weight.original0.uniform_(0.5, 2.0)
    # The official layout: the deprecated torch.nn.utils.weight_norm names.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = nn.utils.weight_norm(nn.Linear(8, 7, bias=False))
    old.weight_g.data.copy_(ref.last_layer.parametrizations.weight.original0)
    old.weight_v.data.copy_(ref.last_layer.parametrizations.weight.original1)
    official = {k: v for k, v in ref.state_dict().items() if not k.startswith("last_layer.")}
    official.update({f"last_layer.{k}": v for k, v in old.state_dict().items()})
    assert {"last_layer.weight_g", "last_layer.weight_v"} <= set(official)

    fresh = DINOHead(16, 7, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    fresh.load_state_dict(official)  # strict, through the load hook
    x = torch.randn(3, 16)
    torch.testing.assert_close(fresh(x), ref(x))
    torch.testing.assert_close(old(F.normalize(ref.mlp(x), dim=-1)), ref(x))

    mapped = dino_head_key_map({"module.head." + k: v for k, v in official.items()})
    assert "module.head.last_layer.parametrizations.weight.original0" in mapped
    back = dino_head_key_map(ref.state_dict(), to_official=True)
    assert set(back) == set(official)


def test_cancel_last_layer_gradients():
    head = DINOHead(8, 5, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    wrapper = nn.ModuleDict({"head": head})
    for epoch, expect_none in ((0, True), (1, False)):
        head.zero_grad(set_to_none=True)
        head(torch.randn(2, 8)).sum().backward()
        cancel_last_layer_gradients(wrapper, epoch, freeze_last_layer_epochs=1)
        last = [p.grad for p in head.last_layer.parameters()]
        assert all((g is None) == expect_none for g in last)
        assert head.mlp[0].weight.grad is not None
