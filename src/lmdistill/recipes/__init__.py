"""Recipe registry. A recipe name in the config resolves here, before anything trains."""

from __future__ import annotations

from lmdistill.errors import ConfigError
from lmdistill.recipes.base import Recipe, RecipeContext, Stage
from lmdistill.recipes.fcd import FCDRecipe
from lmdistill.recipes.finetune import FinetuneRecipe
from lmdistill.recipes.glmd import GLMDRecipe
from lmdistill.recipes.kd import KDRecipe
from lmdistill.recipes.lad import LADRecipe
from lmdistill.recipes.lengthdrop import LengthDropRecipe
from lmdistill.recipes.lwd import LWDRecipe
from lmdistill.recipes.ted import TEDRecipe

RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (FinetuneRecipe, KDRecipe, LWDRecipe, FCDRecipe, TEDRecipe,
                                                      LADRecipe, LengthDropRecipe, GLMDRecipe)}


def register(recipe_class: type[Recipe]) -> type[Recipe]:
    """Add a recipe class to the registry (usable as a decorator by plug-ins)."""
    RECIPES[recipe_class.name] = recipe_class
    return recipe_class


def recipe_class(name: str) -> type[Recipe]:
    if name not in RECIPES:
        raise ConfigError(f"recipe.name: unknown recipe '{name}' (choose from: {', '.join(sorted(RECIPES))})")
    return RECIPES[name]


def recipe_settings_class(name: str):
    return recipe_class(name).settings_class


__all__ = ["RECIPES", "Recipe", "RecipeContext", "Stage", "recipe_class", "recipe_settings_class", "register"]
