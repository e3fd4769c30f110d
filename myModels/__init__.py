"""ClotSeg model package: the 2D U-Net, its losses/metrics and the batch generator.

Keras 3 only (`keras`, `keras.ops`, numpy), so it runs under the TensorFlow,
JAX and torch backends. Importing the package registers the custom losses and
metrics, which lets `keras.models.load_model` reload a saved `.keras` model
without `custom_objects`.

The generator class is imported from its module,
`from myModels.DataGeneratorUNet2D import DataGeneratorUNet2D`; it is not
re-exported here because the class would shadow the module of the same name.
"""

from myModels.losses import (
    BceDiceLoss,
    DiceCoefficient,
    DiceLoss,
    DownsampledLoss,
    FocalTverskyLoss,
    IoUScore,
    TverskyLoss,
    deep_supervision_losses,
    dice_coefficient,
    get_loss,
    get_metrics,
    iou_score,
)
from myModels.registry import MODELS, build_model, register_model
from myModels.resunet2D import build_resunet2d
from myModels.unet2D import build_unet2d

__all__ = [
    "BceDiceLoss",
    "DiceCoefficient",
    "DiceLoss",
    "DownsampledLoss",
    "FocalTverskyLoss",
    "IoUScore",
    "TverskyLoss",
    "MODELS",
    "build_model",
    "build_resunet2d",
    "build_unet2d",
    "register_model",
    "deep_supervision_losses",
    "dice_coefficient",
    "get_loss",
    "get_metrics",
    "iou_score",
]
