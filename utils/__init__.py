"""Infrastructure shared by both problems: arguments, errors, engine, metrics, checkpoints."""
