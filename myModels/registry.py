"""Model registry: `MODEL` in config.py names one builder here.

Every builder takes (input_shape, base_filters, depth, dropout, num_classes)
as keywords (and `deep_supervision` if it offers DEEP_SUPERVISION,
`normalization` if it offers NORMALIZATION = "instance", `dropout_kind` if it
offers DROPOUT_KIND = "spatial", `extra_windows` if it offers EXTRA_WINDOWS_HU) and
returns an uncompiled Keras model of built-in layers only, so every model reloads in Keras safe mode. A new architecture is one
builder function and one `register_model` line here, plus its name in
`clotseg.settings.MODELS` (the settings stay free of Keras imports, so they
validate MODEL against that list; a test keeps the two in sync).
"""

from __future__ import annotations

import inspect
from typing import Callable

import keras

from myModels.resunet2D import build_resunet2d
from myModels.unet2D import build_unet2d

MODELS: dict[str, Callable[..., keras.Model]] = {}


def register_model(name: str, builder: Callable[..., keras.Model]) -> None:
    """Make `builder` available as MODEL = name."""
    MODELS[name] = builder


def build_model(name: str, input_shape, base_filters: int, depth: int, dropout: float,
                num_classes: int, deep_supervision: bool = False, normalization: str = "batch",
                dropout_kind: str = "standard", extra_windows=()) -> keras.Model:
    """Build registered model `name` (ValueError naming the known ones otherwise).

    deep_supervision=True adds the coarser decoder outputs after the main one
    (a list of depth outputs; `myModels.unet2D.decoder_outputs`): for
    training only, the saved inference model is built without them.
    normalization: "batch" (every builder's default) or "instance"
    (`myModels.unet2D.norm_layer`), for builders that offer it; dropout_kind:
    "standard" or "spatial" (`myModels.unet2D.dropout_layer`), likewise;
    extra_windows: (channel, scale, offset) narrower windows the network
    derives from its input (EXTRA_WINDOWS_HU, `myModels.unet2D.input_stem`),
    likewise.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    builder = MODELS[name]
    extra = {}
    if deep_supervision:
        if "deep_supervision" not in inspect.signature(builder).parameters:
            raise ValueError(f"model {name!r} does not offer DEEP_SUPERVISION (its builder has no "
                             "deep_supervision argument); set DEEP_SUPERVISION = False")
        extra["deep_supervision"] = True
    # options a builder may leave out: passed only when set away from their default
    for arg, value, default in (("normalization", normalization, "batch"), ("dropout_kind", dropout_kind, "standard")):
        if value != default:
            if arg not in inspect.signature(builder).parameters:
                raise ValueError(f"model {name!r} does not offer {arg.upper()} = {value!r} (its builder has "
                                 f"no {arg} argument); set {arg.upper()} = {default!r}")
            extra[arg] = value
    if extra_windows:
        if "extra_windows" not in inspect.signature(builder).parameters:
            raise ValueError(f"model {name!r} does not offer EXTRA_WINDOWS_HU (its builder has no extra_windows "
                             "argument); set EXTRA_WINDOWS_HU = {}")
        extra["extra_windows"] = tuple(extra_windows)
    return builder(input_shape=tuple(input_shape), base_filters=base_filters, depth=depth,
                   dropout=dropout, num_classes=num_classes, **extra)


register_model("unet", build_unet2d)
register_model("resunet", build_resunet2d)
