from .checkpoint import load_checkpoint, save_checkpoint
from .loop import RunConfig, train
from .recipes import OPTION_FIELDS, RECIPES, Recipe, get_recipe
from .step import GradientStep

__all__ = ["GradientStep", "OPTION_FIELDS", "RECIPES", "Recipe", "RunConfig", "get_recipe", "load_checkpoint",
           "save_checkpoint", "train"]
