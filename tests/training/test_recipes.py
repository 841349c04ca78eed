from dataclasses import replace

import pytest

from cct.training import RECIPES, Recipe, get_recipe
from cct.training.loop import lr_multiplier


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


def test_unknown_recipe():
    from cct.errors import CCTError

    with pytest.raises(CCTError, match="unknown recipe 'nope'"):
        get_recipe("nope")
