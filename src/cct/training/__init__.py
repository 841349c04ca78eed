from .checkpoint import load_checkpoint, save_checkpoint
from .loop import RunConfig, train
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "RunConfig", "get_recipe", "load_checkpoint", "save_checkpoint", "train"]
