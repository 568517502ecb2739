"""Hyperparameter search: Optuna (TPE sampler, median or Hyperband pruner) over any recipe keys;
every trial is an ordinary run in the study folder. See search.py for the flow."""

from __future__ import annotations

__all__ = ["tune"]


def tune(recipe, **kwargs):
    """Run (or resume) the search of a recipe with a `search:` section; returns a SearchResult."""
    from .search import run_search

    return run_search(recipe, **kwargs)
