"""Model families, one file each, registered by name: ``get_model(name, num_classes=..., ...)``."""
from models.registry import (get_model, get_model_spec, list_models, load_trained, model_options, option_names,
                             register_model, untrained_checkpoint)
from models import beit, deeplab, fcn, lraspp, vgg  # noqa: F401  (registers the builders)

__all__ = ["get_model", "get_model_spec", "list_models", "load_trained", "model_options", "option_names",
           "register_model", "untrained_checkpoint"]
