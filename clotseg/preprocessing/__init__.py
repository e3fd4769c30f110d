"""From raw scans to the model's input: NCCT-to-CTA registration, resampling
to a common spacing and an atlas-free crop around the Circle of Willis.

The algorithms live here (SimpleITK does the registration and resampling);
the pipeline stage that runs them case by case, with manifests and restarts,
is `clotseg.stages.preprocess`.

    geometry.py      voxel grids in world space and their SimpleITK images
    registration.py  rigid (Euler 3D) Mattes mutual information, coarse to fine
    resampling.py    images linear / B-spline, masks nearest neighbour
    roi.py           the Circle-of-Willis box, and putting arrays back on the original grid
"""
