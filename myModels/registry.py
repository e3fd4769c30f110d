"""Model registry: `MODEL` in config.py names one builder here.

Every builder takes (input_shape, base_filters, depth, dropout, num_classes)
as keywords and returns an uncompiled Keras model of built-in layers only,
so every model reloads in Keras safe mode. A new architecture is one
builder function and one `register_model` line here, plus its name in
`clotseg.settings.MODELS` (the settings stay free of Keras imports, so they
validate MODEL against that list; a test keeps the two in sync).
"""

from __future__ import annotations

from typing import Callable

import keras

from myModels.resunet2D import build_resunet2d
from myModels.unet2D import build_unet2d

MODELS: dict[str, Callable[..., keras.Model]] = {}


def register_model(name: str, builder: Callable[..., keras.Model]) -> None:
    """Make `builder` available as MODEL = name."""
    MODELS[name] = builder


def build_model(name: str, input_shape, base_filters: int, depth: int, dropout: float,
                num_classes: int) -> keras.Model:
    """Build registered model `name` (ValueError naming the known ones otherwise)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](input_shape=tuple(input_shape), base_filters=base_filters, depth=depth,
                        dropout=dropout, num_classes=num_classes)


register_model("unet", build_unet2d)
register_model("resunet", build_resunet2d)
