"""ClotSeg: ischemic-stroke clot segmentation on paired CTA/NCCT volumes.

The package layout follows the pipeline, one module per stage:

    clotseg/stages/split.py     1. case-level Training/Validation/Testing split
    clotseg/stages/slicing.py   2. 3D volumes -> 2D multi-channel slices
    clotseg/stages/augment.py   3. albumentations augmentation
    clotseg/stages/train.py     4. U-Net training (model code in myModels/)
    clotseg/stages/evaluate.py  5. volume inference, metrics and report

Shared pieces: `settings` (validated config), `cohort` (finding and checking
cases), `intensity` (HU windows, padding), `io` (atomic writes, manifests),
`phantom` (synthetic CTA/NCCT cohort), `evaluation/` (metrics, report, figures).
"""

__version__ = "0.1.0"
