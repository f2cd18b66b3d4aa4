"""Inference: test-time augmentation and prediction, for validation, grading and the figures alike."""
from inference.predict import predict, segment
from inference.tta import MODES, TTA, forward, run_tta, tta_views

__all__ = ["MODES", "TTA", "forward", "predict", "run_tta", "segment", "tta_views"]
