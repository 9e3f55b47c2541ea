"""Training of the dual encoder, TFLite conversion and bundle export (needs TensorFlow).

Importing this package loads TensorFlow; the `pocketrec` command line imports it only
inside the commands that train. `pocketrec.training.train` is the function; its module
is reached by import (``from pocketrec.training.fit import make_windows``).
"""

from pocketrec.training._trained import TrainedModel
from pocketrec.training.convert import to_tflite, user_tower_shape
from pocketrec.training.export import export_bundle, items_metadata
from pocketrec.training.fit import LOSSES, OBJECTIVES, TrainConfig, make_windows, train
from pocketrec.training.model import (
    ENCODERS,
    ModelConfig,
    build_item_tower,
    build_sequence_encoder,
    build_user_tower,
    title_word_ids,
    user_tower_from_encoder,
)
from pocketrec.training.pipeline import BaselineLead, TrainingRun, run_training
from pocketrec.training.tuning import SEARCH_SPACE, tune

__all__ = [
    "ENCODERS",
    "LOSSES",
    "OBJECTIVES",
    "SEARCH_SPACE",
    "BaselineLead",
    "ModelConfig",
    "TrainConfig",
    "TrainedModel",
    "TrainingRun",
    "build_item_tower",
    "build_sequence_encoder",
    "build_user_tower",
    "export_bundle",
    "items_metadata",
    "make_windows",
    "run_training",
    "title_word_ids",
    "to_tflite",
    "train",
    "tune",
    "user_tower_from_encoder",
    "user_tower_shape",
]
