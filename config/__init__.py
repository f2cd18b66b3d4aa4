"""A training run's configuration: every flag declared once (:mod:`config.flags`) and the recipes
that set them (:mod:`config.recipes`). Training resolves a run's flags from these; the report reads
a run's back through them."""
