"""Importers that turn clinical data into the CT-ClotSeg input layout.

    python -m clotseg.importers nifti  SRC --modality CTA='{case}_cta.nii.gz' ...
    python -m clotseg.importers dicom  SRC --modality CTA=cta --modality NCCT=ncct ...
    python -m clotseg.importers slices IMAGES --masks MASKS --regex '...' ...

Each writes one float32 (H, W, D) volume per modality and a uint8 mask per
case into VOLUME_DIR / MASK_DIR, a `CS<n>.json` sidecar (spacing_mm,
orientation, source files) and `import_map.json` (source name -> case id).
See docs/importing.md. The format modules are imported on first use, so
`--help` and the slice importer never load nibabel/pydicom.
"""

from __future__ import annotations

import importlib

from clotseg.importers.common import (CaseSource, ImportOptions, ImportReport, LoadedCase, assign_case_ids,
                                      mask_to_labels, run_import)

_LAZY = {
    "import_nifti": "clotseg.importers.nifti",
    "load_nifti": "clotseg.importers.nifti",
    "import_dicom": "clotseg.importers.dicom",
    "read_dicom_series": "clotseg.importers.dicom",
    "import_slices": "clotseg.importers.slices",
    "read_slice_image": "clotseg.importers.slices",
    "read_slice_mask": "clotseg.importers.slices",
}

__all__ = ["CaseSource", "ImportOptions", "ImportReport", "LoadedCase", "assign_case_ids", "mask_to_labels",
           "run_import", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clotseg.importers' has no attribute {name!r}")
