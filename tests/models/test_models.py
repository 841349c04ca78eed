import copy
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import cct
from cct.models.layers import (Attention, ConvTokenizer, Dropout, DropPath, KerasEncoderBlock, KerasPaddedMaxPool,
                               PaperEncoderBlock, SequencePooling, resample_position_grid,
                               sinusoidal_embedding)

# The authors' table (reference.md section 2): parameters in millions and GMACs, CIFAR models at 32x32.
PAPER_TABLE = {
    "vit_lite_7_4_32": (3.717, 0.239), "cvt_7_4_32": (3.717, 0.236), "cct_2_3x2_32": (0.284, 0.033),
    "cct_4_3x2_32": (0.482, 0.046), "cct_6_3x2_32": (3.327, 0.241), "cct_7_3x2_32": (3.853, 0.275),
    "cct_7_3x1_32": (3.760, 0.947),
    # The table's 3.168M for CCT 6/3x1 is the model without its 256x256 learnable position table,
    # i.e. the sinusoidal variant; the learnable one has 3,233,803 parameters.
    "cct_6_3x1_32_sine": (3.168, 0.813),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_parameters_and_macs_match_the_paper(name):
    model = cct.create_model(name)
    params, macs = PAPER_TABLE[name]
    assert cct.count_parameters(model) == pytest.approx(params * 1e6, rel=0.005)
    assert cct.count_macs(model) == pytest.approx(macs * 1e9, rel=0.02)


def test_macs_with_attention_add_the_token_token_products():
    model = cct.create_model("cct_keras")  # 64 tokens, 2 blocks of 2 heads of width 128
    assert cct.count_macs(model, include_attention=True) - cct.count_macs(model) == 2 * (2 * 64 * 64 * 2 * 128)


def test_seed_model_parameters_exactly():
    model = cct.create_model("cct_keras")
    assert model.config.name == "cct_2_3x2_32_keras"
    assert cct.count_parameters(model) == 416_331
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert [count(s[0]) for s in model.tokenizer.stages] == [1_728, 73_728]
    assert model.pos_embed.numel() == 8_192
    assert [count(b) for b in model.blocks] == [165_504, 165_504]
    assert (count(model.norm), count(model.pool), count(model.head)) == (256, 129, 1_290)
    attention = model.blocks[0].attn
    for projection in (attention.query, attention.key, attention.value):
        assert projection.weight.shape == (2 * 128, 128) and projection.bias is not None
    assert attention.proj.weight.shape == (128, 256)
    assert [b.drop_path.p for b in model.blocks] == [0.0, 0.1]
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_seed_tokenizer_shapes_follow_keras_padding():
    model = cct.create_model("cct_keras")
    x = torch.rand(2, 3, 32, 32)
    shapes = []
    for stage in model.tokenizer.stages:
        for layer in stage:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    # conv 32 -> 30, zero padding to 32 and pooling to 16 (one module), ReLU, then 16 -> 14 -> (16) -> 8
    assert shapes == [(64, 30, 30), (64, 16, 16), (64, 16, 16), (128, 14, 14), (128, 8, 8), (128, 8, 8)]


def _keras_zero_pad_then_same_pool(x, zero_padding):
    """The literal Keras ops: ZeroPadding2D, then MaxPooling2D(3, 2, "same") padding -inf bottom/right first."""
    x = F.pad(x, (zero_padding,) * 4)
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


@pytest.mark.parametrize("shape,zero_padding", [((30, 30), 1), ((14, 14), 1), ((31, 31), 1), ((30, 29), 1),
                                                ((26, 26), 3)])
def test_keras_padded_max_pool_then_relu_matches_keras_relu_then_pool(shape, zero_padding):
    torch.manual_seed(0)
    z = torch.randn(2, 3, *shape, requires_grad=True)  # the conv output
    z_ref = z.detach().clone().requires_grad_()
    out = torch.relu(KerasPaddedMaxPool(zero_padding)(z))
    ref = _keras_zero_pad_then_same_pool(torch.relu(z_ref), zero_padding)
    assert out.shape == ref.shape and torch.equal(out, ref)
    weights = torch.randn_like(ref)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(z.grad, z_ref.grad)


def test_paper_tokenizer_matches_conv_relu_pool_in_outputs_and_gradients():
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(3, 32, num_convs=2, kernel_size=3, hidden_channels=16, style="paper")
    x = torch.randn(2, 3, 32, 32)
    ref = x
    for stage in tokenizer.stages:  # the paper's order: conv -> ReLU -> max-pool(3, 2, padding 1)
        ref = F.max_pool2d(torch.relu(stage[0](ref)), 3, 2, padding=1)
    ref = ref.flatten(2).transpose(1, 2)
    ref_grads = torch.autograd.grad(ref.square().sum(), [s[0].weight for s in tokenizer.stages])
    out = tokenizer(x)
    grads = torch.autograd.grad(out.square().sum(), [s[0].weight for s in tokenizer.stages])
    assert out.shape == (2, 64, 32) and torch.equal(out, ref)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))


def test_models_are_listed_in_natural_order():
    # cct_14_7x2_224 came first, before cct_2_3x2_32 (`cct models` too)
    assert cct.list_models("cct_*_3x2_32") == ["cct_2_3x2_32", "cct_4_3x2_32", "cct_6_3x2_32", "cct_7_3x2_32"]
    assert cct.list_models("cct_*_7x2_224") == ["cct_7_7x2_224", "cct_14_7x2_224"]


@pytest.mark.parametrize("name", cct.list_models())
def test_every_variant_classifies_a_batch(name):
    model = cct.create_model(name).eval()
    c = model.config
    with torch.no_grad():
        logits = model(torch.rand(2, 3, c.img_size, c.img_size))
        # an empty batch: torch's "cannot reshape tensor of 0 elements into shape [0, 64, -1]"
        empty = model(torch.rand(0, 3, c.img_size, c.img_size))
    assert logits.shape == (2, c.num_classes) and empty.shape == (0, c.num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("embedding", ["learnable", "sine", "none"])
def test_positional_embeddings(embedding):
    model = cct.create_model("cct_7_3x2_32", positional_embedding=embedding)
    if embedding == "learnable":
        assert isinstance(model.pos_embed, torch.nn.Parameter) and model.pos_embed.shape == (1, 64, 256)
    elif embedding == "sine":
        assert not isinstance(model.pos_embed, torch.nn.Parameter)
        assert torch.allclose(model.pos_embed[0], sinusoidal_embedding(64, 256))
        assert "pos_embed" not in model.state_dict()
    else:
        assert model.pos_embed is None
    logits = model(torch.rand(3, 3, 32, 32))
    logits.sum().backward()
    assert logits.shape == (3, 10)


def test_other_image_sizes_get_resampled_or_recomputed_position_tables():
    model = cct.create_model("cct_4_3x2_32")  # an 8 x 8 token grid
    assert model.position_table(64) is model.pos_embed
    with torch.no_grad():
        model.pos_embed.copy_(torch.linspace(-1, 1, 8).view(1, 8, 1, 1).expand(1, 8, 8, 128).reshape(1, 64, 128))
    small = model.position_table(16).view(4, 4, 128)  # 16 x 16 images: a 4 x 4 grid
    assert torch.allclose(small[:, 0], small[:, 3]) and torch.allclose(small[0], small[0, 0].expand(4, 128))
    rows = small[:, 0, 0]
    assert (rows.diff() > 0).all() and -1 < rows[0] < -0.5 and 0.5 < rows[3] < 1  # the same ramp, coarser
    model.pos_embed.data.fill_(0.25)
    assert torch.allclose(model.position_table(144), torch.full((1, 144, 128), 0.25))  # 48 x 48 images
    (model.position_table(16) ** 2).sum().backward()
    assert model.pos_embed.grad.abs().sum() > 0  # training at another size trains the model's own table
    table = torch.randn(1, 64, 128)  # a model frozen in bf16 (torch has no bf16 antialiased resampling on the CPU)
    assert torch.equal(resample_position_grid(table.bfloat16(), 16),
                       resample_position_grid(table.bfloat16().float(), 16).bfloat16())
    classed = cct.create_model("vit_lite_6_4_32")  # a class token, then an 8 x 8 grid
    assert torch.equal(classed.position_table(17)[:, 0], classed.pos_embed[:, 0])
    sine = cct.create_model("cct_4_3x2_32_sine")
    assert torch.allclose(sine.position_table(16)[0], sinusoidal_embedding(16, 128))


def test_sinusoidal_table_values():
    table = sinusoidal_embedding(5, 8)
    p, i = 3, 4  # even column: sin(p / 10000^(i/dim)); odd column i+1 uses the same frequency with cos
    assert table[p, i].item() == pytest.approx(torch.sin(torch.tensor(p / 10000 ** (i / 8))).item(), abs=1e-6)
    assert table[p, i + 1].item() == pytest.approx(torch.cos(torch.tensor(p / 10000 ** (i / 8))).item(), abs=1e-6)


def test_any_input_size_and_class_count():
    model = cct.create_model("cct_7_3x1_32", num_classes=100, img_size=48)
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 100)
    assert model.num_tokens == 48 * 48 // 4
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)  # its position table resampled to 16 x 16 tokens
    # a ValueError about tokens ("got 384 tokens, not a square grid"); 64x16 images on a 32x32 model, as many
    # tokens as its table has, took that table as it was
    for net, size in ((model, "48x32"), (cct.create_model("cct_keras"), "64x16")):
        with pytest.raises(cct.CCTError, match=rf"^{net.config.name} takes square images \(its learned position "
                                               rf"table is a square grid of tokens\), got {size}$"):
            net(torch.rand(1, 3, *map(int, size.split("x"))))
    free = cct.create_model("cvt_7_4_32", positional_embedding="none", num_classes=7)
    assert free(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_an_adapted_model_keeps_the_weights_but_its_new_head_and_resampled_positions():
    source = cct.create_model("cct_4_3x2_32", class_names=tuple("abcdefghij"))
    model, changed = cct.models.adapted(source, num_classes=3, img_size=48, dropout=0.2)
    assert changed == ["the head made anew (3 classes)", "the position table resampled from 64 to 144 tokens"]
    assert model.config.num_classes == 3 and model.config.class_names == () and model.config.dropout == 0.2
    old, new = source.state_dict(), model.state_dict()
    assert new["head.weight"].shape == (3, 128)
    assert torch.equal(new["pos_embed"], source.position_table(144).detach())
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith(("head.", "pos_embed")))
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 3)
    same, changed = cct.models.adapted(source, class_names=tuple("abcdefghij"), stochastic_depth=0.0)
    assert changed == [] and all(torch.equal(same.state_dict()[k], v) for k, v in old.items())
    renamed, changed = cct.models.adapted(source, class_names=tuple("klmnopqrst"))  # ten other classes
    assert changed == ["the head made anew (10 classes)"]
    assert not torch.equal(renamed.head.weight, source.head.weight)
    with pytest.raises(cct.CCTError, match="fix the model config: embed_dim is 128 there, not 64; "
                                           "positional_embedding is 'learnable' there, not 'sine'"):
        cct.models.adapted(source, embed_dim=64, positional_embedding="sine", num_classes=3)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(cct.CCTError, match="unknown model 'cct_3_3x2_32'"):
        cct.create_model("cct_3_3x2_32")
    with pytest.raises(cct.CCTError) as error:
        cct.create_model("cct_7_3x1")
    similar = "cct_7_3x1_32, cct_7_3x2_32, cct_6_3x1_32, cct_7_3x1_32_sine, cct_6_3x2_32"
    assert str(error.value).endswith(f"; did you mean {similar}?")


@pytest.mark.parametrize("field, hint", [
    ("num_class", "; did you mean num_classes, num_layers, num_heads?"),
    ("drop_path_rate", "; timm's name for stochastic_depth"),
    ("drop_rate", "; timm's name for dropout"), ("colour", ""),
])
def test_an_unknown_model_config_field_names_the_one_meant(field, hint):
    # a timm user's drop_path_rate, or a typo, got the list of fields alone
    with pytest.raises(cct.CCTError, match=rf"^unknown model config field '{field}'{re.escape(hint)} \(fields: "
                                           r"attention_dropout, class_names, dropout, embed_dim, "):
        cct.create_model("cct_2_3x2_32", **{field: 0.1})


@pytest.mark.parametrize("overrides, message", [
    ({"dropout": 2}, r"dropout: expected a number in \[0, 1\), got 2"),
    ({"positional_embedding": "foo"}, "positional_embedding: expected \"learnable\", \"sine\" or \"none\", got 'foo'"),
    ({"embed_dim": -3}, "embed_dim: expected an integer of at least 1, got -3"),
    ({"mlp_ratio": "2"}, "mlp_ratio: expected a number above 0, got '2'"),
    ({"mean": (0.5, 0.5)}, r"mean: expected 3 values \(in_chans\), got \[0.5, 0.5\]"),
    ({"class_names": ("cat",)}, r"class_names: expected 10 names \(num_classes\) or none, got 1"),
    ({"in_chans": 1, "std": (0.2, 0.2, 0.2)}, r"std: expected 1 value \(in_chans\), got \[0.2, 0.2, 0.2\]"),
    # the heads were 42 wide, 126 of the 128 features attended to
    ({"num_heads": 3}, r"num_heads: embed_dim 128 does not split into 3 heads \(give heads that divide it, or a "
                       r"head_dim\)"),
    # an MLP of 0 hidden features trained, adding only fc2's bias
    ({"mlp_ratio": 0.001}, r"mlp_ratio: 0.001 of embed_dim 128 leaves the MLP no hidden features \(at least "
                           r"0.0078125\)"),
])
def test_a_bad_model_config_field_is_a_clear_error(overrides, message):
    with pytest.raises(cct.CCTError, match=f"^model config field {message}$"):
        cct.create_model("cct_2_3x2_32", **overrides)


def test_a_head_dim_sets_the_width_of_every_head_in_both_styles():
    # a paper-style model ignored it (`--model-arg head_dim=32` trained heads of 64)
    for name, style_default in (("cct_2_3x2_32", 64), ("cct_keras", 128)):
        assert cct.create_model(name).blocks[0].attn.head_dim == style_default
        model = cct.create_model(name, head_dim=32, num_heads=3)
        assert all((b.attn.num_heads, b.attn.head_dim, b.attn.query.out_features) == (3, 32, 96) for b in model.blocks)
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("overrides, words", [
    ({"tokenizer": "patch", "patch_size": 64}, "its patches of 64x64"),
    ({"style": "keras", "num_convs": 8}, "its 8 convolutions of kernel 3 and stride-2 max-pools"),
])
def test_an_image_too_small_for_the_tokenizer_is_a_clear_error(overrides, words):
    # it was torch's "Calculated padded input size per channel: (32 x 32). Kernel size: (64 x 64)..." traceback
    with pytest.raises(cct.CCTError, match=f"^cct_2_3x2_32: a 32x32 image is too small for {words}; give larger images "
                       "or a smaller tokenizer$"):
        cct.create_model("cct_2_3x2_32", **overrides)


def test_a_grayscale_variant_takes_the_gray_of_the_rgb_mean_and_std_unless_given():
    # `--model-arg in_chans=1` alone was "model config field mean: expected 1 values (in_chans), got [0.4914, ...]"
    gray = cct.create_model("cct_2_3x2_32", in_chans=1).config
    assert gray.mean == (round(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465, 4),) == (0.4809,)
    assert gray.std == (round(0.299 * 0.2470 + 0.587 * 0.2435 + 0.114 * 0.2616, 4),) == (0.2466,)
    keras = cct.create_model("cct_keras", in_chans=1).config
    assert (keras.mean, keras.std) == ((0.0,), (1.0,))
    given = cct.create_model("cct_2_3x2_32", in_chans=1, std=[0.2]).config
    assert (given.mean, given.std) == ((0.4809,), (0.2,))


def test_lists_are_taken_where_a_config_holds_tuples():
    # a caller's lists, or JSON's (`--model-arg mean=[0.5,0.5,0.5]`), were refused as "expected [numbers, one per
    # channel], got [0.5, 0.5, 0.5]"
    config = cct.create_model("cct_2_3x2_32", num_classes=2, class_names=["cat", "dog"], mean=[0.5, 0.5, 0.5]).config
    assert config.class_names == ("cat", "dog") and config.mean == (0.5, 0.5, 0.5)
    assert config == cct.CCTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    with pytest.raises(cct.CCTError, match=r"^model config field std: expected 3 values \(in_chans\), got \[1, 1\]$"):
        cct.create_model("cct_2_3x2_32", std=[1, 1])


def test_keras_block_applies_gelu_after_both_mlp_layers():
    torch.manual_seed(0)
    block = KerasEncoderBlock(16, 2, 16, 1.0, 0.0, 0.0, 0.0).eval()
    for layer in (block.attn.proj,):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    x = torch.randn(4, 5, 16) * 3
    mlp = block(x) - x
    assert mlp.min() >= -0.1701  # GELU's minimum: the branch ends in a GELU
    assert torch.allclose(mlp, F.gelu(block.fc2(F.gelu(block.fc1(block.norm2(x))))), atol=1e-6)


def test_paper_block_normalises_the_stream_after_attention():
    torch.manual_seed(0)
    block = PaperEncoderBlock(16, 2, None, 2.0, 0.0, 0.0, 0.0).eval()
    torch.nn.init.zeros_(block.fc2.weight)
    torch.nn.init.zeros_(block.fc2.bias)
    x = torch.randn(4, 5, 16) * 3 + 2
    y = block(x)
    assert torch.allclose(y, block.norm1(x + block.attn(block.pre_norm(x))), atol=1e-6)
    assert torch.allclose(y.mean(-1), torch.zeros(4, 5), atol=1e-5)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(20_000, 3, 2))
    per_sample = out.flatten(1)
    assert torch.allclose(per_sample.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (per_sample.std(1) == 0).all()  # a sample is kept or dropped whole
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.015)
    assert torch.equal(layer.eval()(torch.ones(3, 2)), torch.ones(3, 2))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_zeroes_elements_at_its_rate_and_torch_seeds_decide_its_masks(p):
    layer = Dropout(p).train()
    torch.manual_seed(0)
    first, second = layer(torch.ones(1_000_003)), layer(torch.ones(1_000_003))
    assert torch.allclose(first.unique(), torch.tensor([0.0, 1 / (1 - p)]))
    assert (first == 0).float().mean().item() == pytest.approx(p, abs=0.002)
    assert first.mean().item() == pytest.approx(1.0, abs=0.005)
    assert (first != second).float().mean().item() == pytest.approx(2 * p * (1 - p), abs=0.003)  # independent
    torch.manual_seed(0)
    assert torch.equal(layer(torch.ones(1_000_003)), first)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dropout_masks_keep_the_input_dtype(dtype):
    torch.manual_seed(0)
    out = Dropout(0.1).train()(torch.ones(100_003, dtype=dtype))
    assert out.dtype == dtype
    assert torch.equal(out.unique(), torch.tensor([0.0, 1 / 0.9], dtype=dtype))
    assert (out == 0).float().mean().item() == pytest.approx(0.1, abs=0.005)


def test_sequence_pooling_is_a_softmax_weighted_sum():
    torch.manual_seed(0)
    pool = SequencePooling(8)
    x = torch.randn(2, 6, 8)
    weights = pool.weights(x)
    assert torch.allclose(weights.sum(1), torch.ones(2))
    assert torch.allclose(pool(x), (weights[..., None] * x).sum(1), atol=1e-6)


def test_a_model_refuses_images_it_would_misread():
    # uint8 images were normalised as if 0-255 were 0-1, and unbatched ones ran through the unbatched convs
    model = cct.create_model("cct_2_3x2_32").eval()
    for x, got in ((torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "uint8 (2, 3, 32, 32)"),
                   (torch.rand(3, 32, 32), "float32 (3, 32, 32)"),
                   (torch.rand(2, 32, 32, 3), "float32 (2, 32, 32, 3)")):
        with pytest.raises(cct.CCTError, match=rf"^cct_2_3x2_32 takes float images \(B, 3, H, W\) in \[0, 1\], "
                                               rf"got {re.escape(got)} \(uint8 images: divide by 255"):
            model(x)


def test_model_normalises_its_input():
    model = cct.create_model("cct_2_3x2_32").eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(model.config.mean).view(1, 3, 1, 1), torch.tensor(model.config.std).view(1, 3, 1, 1)
    direct = model.head(model.pool(model.norm(model.blocks(model.tokenizer((x - mean) / std) + model.pos_embed))))
    assert torch.allclose(model(x), direct, atol=1e-5)


@pytest.mark.parametrize("num_tokens", [10, 100])  # the CPU's explicit math path, and SDPA's fused kernel
@pytest.mark.parametrize("training", [False, True])
def test_attention_is_softmax_of_scaled_query_key_products_over_values(num_tokens, training):
    torch.manual_seed(0)
    attention = Attention(32, num_heads=4, head_dim=16, attention_dropout=0.0).train(training)
    x = torch.randn(2, num_tokens, 32)
    q, k, v = (p(x).view(2, num_tokens, 4, 16).transpose(1, 2) for p in (attention.query, attention.key,
                                                                          attention.value))
    weights = (q @ k.transpose(-2, -1) / 4).softmax(dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, num_tokens, 64))
    assert torch.allclose(attention(x), expected, atol=1e-5)


@pytest.mark.parametrize("fold", [False, True])
def test_cpu_training_attention_in_chunks_of_images_keeps_outputs_and_gradients(fold):
    torch.manual_seed(0)
    whole = Attention(32, num_heads=4, head_dim=16, qkv_bias=True, attention_dropout=0.0).train()
    whole.fold = fold
    chunked = copy.deepcopy(whole)
    chunked.CPU_SCORES_BYTES = 4 * 50 * 50 * 4  # one image's scores: 3 chunks
    chunks, method = [], "folded" if fold else "attend"
    original = getattr(chunked, method)
    setattr(chunked, method, lambda x, *rest: chunks.append(len(x)) or original(x, *rest))
    x, target = torch.randn(3, 50, 32), torch.randn(3, 50, 32)
    for module in (whole, chunked):
        (module(x) * target).sum().backward()
    assert chunks == [1, 1, 1]
    assert torch.allclose(chunked(x), whole(x), atol=1e-6)
    for (name, p), q in zip(chunked.named_parameters(), whole.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_chunked_attention_draws_its_dropout_afresh_for_every_chunk():
    torch.manual_seed(0)
    attention = Attention(32, num_heads=4, head_dim=16, attention_dropout=0.5).train()
    attention.CPU_SCORES_BYTES = 4 * 50 * 50 * 4
    out = attention(torch.randn(1, 50, 32).expand(3, -1, -1))  # the same image thrice, one chunk each
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_folded_attention_keeps_the_outputs_and_every_gradient(qkv_bias):
    """Exact in fp64: the folded computation's outputs and the gradients of all weights, the key bias's
    (zero up to rounding: softmax cancels it) included."""
    torch.manual_seed(0)
    plain = Attention(48, num_heads=3, head_dim=64, qkv_bias=qkv_bias).double()
    folded = copy.deepcopy(plain)
    folded.fold = True
    x = torch.randn(2, 20, 48, dtype=torch.float64)
    target = torch.randn(2, 20, 48, dtype=torch.float64)
    for module in (plain, folded):
        out = module(x)
        (out * target).sum().backward()
    assert torch.allclose(folded(x), plain(x), rtol=0, atol=1e-12)
    grads = {name: p.grad for name, p in folded.named_parameters()}
    assert len(grads) == (8 if qkv_bias else 5) and all(g is not None for g in grads.values())
    for name, p in plain.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=0, atol=1e-10), name
    if qkv_bias:
        assert grads["key.bias"].abs().max() < 1e-12


def test_folding_applies_where_heads_are_as_wide_as_the_model():
    keras = cct.create_model("cct_keras")
    paper = cct.create_model("cct_7_3x1_32")
    assert all(b.attn.fold_saves_work for b in keras.blocks)
    assert not any(b.attn.fold_saves_work for b in paper.blocks)
