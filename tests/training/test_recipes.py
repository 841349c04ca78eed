from dataclasses import fields, replace

import pytest

from cct.cli import main
from cct.errors import CCTError
from cct.training import RECIPES, Recipe, get_recipe
from cct.training.loop import epoch_image_size, lr_multiplier
from cct.training.recipes import _FIELD_RULES, PURPOSES


def test_keras_example_is_the_seed_recipe():
    r = get_recipe("keras-example")
    assert (r.epochs, r.batch_size, r.lr, r.betas, r.eps, r.weight_decay) == (30, 128, 1e-3, (0.9, 0.999), 1e-7, 1e-4)
    assert (r.label_smoothing, r.val_size, r.crop_padding, r.hflip, r.schedule) == (0.1, 5000, 0, True, "constant")


def test_recipe_round_trips_through_a_dict():
    for recipe in RECIPES.values():
        assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_constant_schedule_with_warmup():
    recipe = replace(get_recipe("keras-example"), warmup_epochs=1)
    factor = lr_multiplier(recipe, steps_per_epoch=10)
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == 1.0 and factor(299) == 1.0


def test_cosine_schedule_decays_to_the_floor():
    recipe = replace(get_recipe("fast"), epochs=10, warmup_epochs=1, lr=1e-3, min_lr=1e-5)
    factor = lr_multiplier(recipe, steps_per_epoch=100)
    assert factor(99) == pytest.approx(1.0)
    assert factor(100) == pytest.approx(1.0)
    assert factor(550) == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-6)  # halfway through the decay
    assert factor(1000) == pytest.approx(0.01)
    values = [factor(s) for s in range(100, 1000)]
    assert values == sorted(values, reverse=True)


def test_paper_recipes_are_the_reference_ones():
    r = get_recipe("cct-paper-200")
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay, r.warmup_epochs, r.schedule) == (200, 128, 5e-4, 3e-2, 5,
                                                                                          "cosine")
    assert (r.auto_augment, r.crop_padding, r.hflip, r.label_smoothing) == (True, 4, True, 0.1)
    assert (r.mixup_alpha, r.cutmix_alpha, r.rand_augment) == (0, 0, None)
    r = get_recipe("cct-paper-300")
    assert (r.epochs, r.batch_size, r.lr, r.min_lr, r.weight_decay) == (300, 128, 5.5e-4, 1e-5, 0.06)
    assert (r.warmup_epochs, r.warmup_lr, r.schedule, r.label_smoothing) == (10, 1e-5, "cosine", 0.1)
    assert (r.resized_crop_scale, r.rand_augment, r.auto_augment) == ((0.8, 1.0), (2, 9.0, 0.5), False)
    assert (r.mixup_alpha, r.cutmix_alpha, r.mix_switch_prob, r.mix_off_epoch) == (0.8, 1.0, 0.5, 175)


def test_warmup_starts_from_warmup_lr():
    recipe = get_recipe("cct-paper-300")
    factor = lr_multiplier(recipe, steps_per_epoch=10)
    assert factor(0) * recipe.lr == pytest.approx(1e-5 + (5.5e-4 - 1e-5) / 100)
    assert factor(99) == pytest.approx(1.0)


def test_overrides_convert_json_lists_and_refuse_unknown_fields():
    r = get_recipe("fast").with_overrides({"rand_augment": [2, 9, 0.5], "ema_decay": 0.99})
    assert r.rand_augment == (2, 9, 0.5) and r.ema_decay == 0.99 and r.name == "fast"
    assert replace(r, betas=[0.9, 0.99], progressive_resize=[[16, 2]]).progressive_resize == ((16, 2),)
    with pytest.raises(CCTError, match=r"^unknown recipe field ema \(see `cct recipes`\)$"):
        r.with_overrides({"ema": 0.9})
    with pytest.raises(CCTError, match=r"^unknown recipe fields ema, lr_max \(see `cct recipes`\)$"):
        r.with_overrides({"lr_max": 0.1, "ema": 0.9})
    with pytest.raises(CCTError, match=r"^unknown recipe fields lable_smoothing, warmup \(see `cct recipes`\); did "
                                       r"you mean label_smoothing, warmup_lr, warmup_epochs\?$"):
        r.with_overrides({"lable_smoothing": 0.1, "warmup": 2})


def test_cct_recipes_lists_every_recipe_or_the_named_ones_in_full(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    # each headed by what it is for (the fields alone did not say which to choose)
    headings = [line for line in out.splitlines() if not line.startswith("  ")]
    assert headings == [f"{name}: {PURPOSES[name]}" for name in RECIPES]
    assert sum(line.startswith("  auto_augment ") for line in out.splitlines()) == len(RECIPES)  # every field
    assert main(["recipes", "fast", "keras-example"]) == 0  # was "unrecognized arguments"
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith("  ")] == ["fast", "keras-example"]
    assert "  epochs               12\n" in out and "  epochs               30\n" in out
    # values as --recipe-arg takes them (JSON): "((16, 4), (24, 5))", "None" and "True" were Python's
    assert "  progressive_resize   [[16, 4], [24, 5]]\n" in out and "  limit_train          null\n" in out
    assert "  tta_flip             true\n" in out and "  betas                [0.9, 0.999]\n" in out
    assert main(["recipes", "fats"]) == 1
    assert capsys.readouterr().err.startswith("cct: error: unknown recipe 'fats' (choose from keras-example, fast,")


def test_unknown_recipe():
    with pytest.raises(CCTError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_progressive_resize_stages_from_json_lists_and_epoch_sizes():
    recipe = get_recipe("fast").with_overrides({"progressive_resize": [[16, 2], [24, 3]]})
    assert recipe.progressive_resize == ((16, 2), (24, 3))
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert [epoch_image_size(recipe, e, 32) for e in range(1, 8)] == [16, 16, 24, 24, 24, 32, 32]
    assert epoch_image_size(get_recipe("keras-example"), 1, 32) == 32
    for bad in ([16, 2], [[16]], [[0, 2]], [[16, 2.5]]):
        with pytest.raises(CCTError, match=r"recipe field progressive_resize: expected \[\[size, epochs\], \.\.\.\]"):
            get_recipe("fast").with_overrides({"progressive_resize": bad})


def test_progressive_resize_stages_leave_the_last_epochs_at_full_size():
    # `--recipe fast --epochs 6` trained every epoch on 16x16 images, then tested at 32x32 (and its card said
    # "16x16 for 4 epochs, then 24x24 for 5 epochs")
    for epochs, advice in ((9, r"shorten them \(--recipe-arg progressive_resize=\[\[16,3\],\[24,4\]\]\) or drop"),
                           (6, r"shorten them \(--recipe-arg progressive_resize=\[\[16,2\],\[24,2\]\]\) or drop"),
                           (3, r"shorten them \(--recipe-arg progressive_resize=\[\[24,1\]\]\) or drop"),
                           (1, r"tested at\): drop them \(--recipe-arg progressive_resize=\[\]\)")):
        with pytest.raises(CCTError, match=rf"recipe field progressive_resize: its stages take 9 epochs of the "
                                           rf"{epochs}, so none would train at the dataset's image size.*{advice}"):
            get_recipe("fast").with_overrides({"epochs": epochs})
    assert get_recipe("fast").with_overrides({"epochs": 6, "progressive_resize": [[16, 2], [24, 2]]}).epochs == 6
    assert get_recipe("fast").with_overrides({"epochs": 1, "progressive_resize": []}).epochs == 1


def test_a_schedule_that_rises_above_its_peak_lr_is_refused():
    # each of these trained: a cosine "decay" up to twice the peak lr, a warmup down to it
    with pytest.raises(CCTError, match=r"^recipe field min_lr: 1e-05 is above lr 5e-06, its peak; give a lower min_lr "
                                       r"\(--recipe-arg min_lr=...\) or a higher lr$"):
        get_recipe("fast").with_overrides({"lr": 5e-6})
    with pytest.raises(CCTError, match=r"^recipe field warmup_lr: 0.01 is above lr 0.003"):
        get_recipe("fast").with_overrides({"warmup_lr": 1e-2})
    # where the field plays no part; and a run shorter than its warmup (a quick try of a long recipe) is taken
    assert get_recipe("keras-example").with_overrides({"min_lr": 1e-2, "warmup_lr": 1e-2}).lr == 1e-3
    assert get_recipe("small-cpu").with_overrides({"epochs": 2}).warmup_epochs == 3


@pytest.mark.parametrize("field, bad, expected", [
    ("epochs", 0, "an integer of at least 1, got 0"),
    ("batch_size", 2.5, "an integer of at least 1, got 2.5"),
    ("lr", -1, "a number above 0, got -1"),
    ("lr", "1e-3", "a number above 0, got '1e-3'"),
    ("betas", [0.9, 1.5], r"\[beta1, beta2\] in \[0, 1\), got \[0.9, 1.5\]"),
    ("schedule", "linear", "\"constant\" or \"cosine\", got 'linear'"),
    ("dropout", 1.0, r"null or a number in \[0, 1\), got 1.0"),
    ("hflip", 1, "true or false, got 1"),
    ("limit_train", 0, "null or an integer of at least 1, got 0"),
    ("resized_crop_scale", [0.9, 0.8], r"null or \[min, max\] area fractions, 0 < min <= max <= 1, got \[0.9, 0.8\]"),
])
def test_a_bad_recipe_field_is_a_clear_error(field, bad, expected):
    with pytest.raises(CCTError, match=f"^recipe field {field}: expected {expected}$"):
        get_recipe("keras-example").with_overrides({field: bad})


def test_every_recipe_field_is_checked_and_the_named_recipes_pass():
    assert set(_FIELD_RULES) == {f.name for f in fields(Recipe)} - {"name"}
    for recipe in RECIPES.values():
        assert all(valid(getattr(recipe, name)) for name, valid in _FIELD_RULES.items())


def test_cct_train_with_a_bad_option_fails_in_one_line_before_reading_data(tmp_path, capsys):
    assert main(["train", "--model", "cct_keras", "--dataset", str(tmp_path / "nothing"), "--batch-size", "0"]) == 1
    error = "cct: error: recipe field batch_size: expected an integer of at least 1, got 0"
    assert capsys.readouterr().err.strip() == error
