"""The training loop: trainer, batch loops, run folder and checkpoint layout, recipes, optimisers, losses."""
