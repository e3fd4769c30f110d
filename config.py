"""ClotSeg settings: edit the constants below, then run `python training.py`
and `python testing.py`.

This is a flat module of UPPER_CASE constants, as in the original CT-ClotSeg.
A later assignment of the same name wins. ClotSeg reads it once at start-up,
checks every value (all problems are listed at once, before any work starts)
and turns it into a validated settings object (`clotseg.settings.Settings`).

Presets: `python training.py --preset demo` overlays the small, CPU-friendly
values of PRESETS["demo"] on the constants below without changing them.

The measured effects quoted in the comments (paired Dice differences with
their 95% CIs, "... round") are recorded round by round in
docs/quality-rounds.md; the README's "At a glance" table sums them up.
"""

# --------------------------------------------------------------------------
# Pipeline stages: True = (re)do the stage, False = reuse what is on disk.
# A stage whose inputs and settings did not change is skipped either way.
# --------------------------------------------------------------------------
PREPROCESS = False        # 0. raw scans: register NCCT to CTA, resample, crop around the Circle of Willis
                          #    (False: the cohort is already prepared, as CT-ClotSeg's 3D Slicer output)
TRAIN_TEST_SPLIT = True   # 1. case-level split into Training / Validation / Testing
SLICE_EXTRACT = True      # 2. 3D volumes -> 2D two-channel slices (Training, Validation)
DATA_AUG = True           # 3. albumentations augmentation up to the target sample sizes
MODEL_TRAINING = True     # 4. train the 2D U-Net

# --------------------------------------------------------------------------
# Folders (relative to this file) and the file naming convention.
# <ID> in a pattern stands for the case id; matching ignores case.
# --------------------------------------------------------------------------
VOLUME_DIR = "DL_vol_files/binary"
MASK_DIR = "DL_seg_files/binary"
PROCESSED_DIR = "Processed"
TRAININGS_DIR = "Trainings"
CASE_PREFIX = "CS"                         # case ids look like CS<ID>, e.g. CS12
MODALITY_PATTERNS = {                       # one input channel per modality, in this order
    "CTA": "CS<ID>_CTA_Binary.npy",
    "NCCT": "CS<ID>_NCCT_Reg_Binary.npy",
}
MASK_PATTERN = "CS<ID>_seg_corrected_binary.npy"

# Intensity window per modality in HU: (low, high) is mapped to [0, 1] and
# clipped. None means the volume is already normalised to [0, 1].
# CTA: wide so both the bright lumen and the filling defect stay visible.
# NCCT: 0-200 HU rather than the brain window W80/L40: at 80 HU a hyperdense
# clot (45-75 HU) and a calcification (130 HU and up, the classic false
# positive) clip to the same white; up to 200 HU they stay apart, and the clot
# still spans ~40 of the 255 codes. Measured: validation Dice 0.638 vs 0.551
# (demo scale, README "Segmentation quality").
WINDOWS_HU = {
    "CTA": (-100.0, 600.0),
    "NCCT": (0.0, 200.0),
}
# HU windows of the report's pictures only (overlays, montage), per modality
# name; a modality not named here is shown in its WINDOWS_HU, a name that is
# no modality of yours is ignored, and cases that are not HU (8-bit slice
# imports, window None) keep their WINDOWS_HU. The model never sees these:
# the NCCT is shown in the brain window W80/L40 a reader expects, not 0-200.
DISPLAY_WINDOWS_HU = {
    "NCCT": (0.0, 80.0),
}
# Voxel spacing in mm (row, column, slice) used for mm-based metrics when a
# case has no <case>.json sidecar with "spacing_mm". None = report in voxels.
VOXEL_SPACING_MM = None

# --------------------------------------------------------------------------
# Preprocessing (stage 0, PREPROCESS = True): raw CTA + NCCT per case, each on
# its own grid (spacing and world position from the <case>.json sidecar: see
# README "Raw scans"). The NCCT is rigidly registered to the CTA, everything
# is resampled to TARGET_SPACING_MM and cropped to a box of ROI_SIZE_MM
# around the Circle of Willis; ROI_SIZE_MM / TARGET_SPACING_MM must fit
# INPUT_SHAPE's rows and cols.
# --------------------------------------------------------------------------
TARGET_SPACING_MM = (0.5, 0.5, 1.0)     # (row, col, slice) mm of the prepared volumes
ROI_SIZE_MM = (120.0, 120.0, 80.0)      # (row, col, slice) mm of the crop; an axis shorter than this is kept whole
IMAGE_INTERPOLATION = "linear"          # "linear" or "bspline" (cubic) for the CT volumes
MASK_INTERPOLATION = "volume"           # "volume": partial-volume fractions, each label keeps its volume (mm3);
                                        # "nearest": nearest neighbour (a small clot's volume moves by tens of %)

# --------------------------------------------------------------------------
# Split (stage 1)
# --------------------------------------------------------------------------
RANDOM_SEED = 42
TRAIN_PERC = 0.6
VAL_PERC = 0.2          # test = 1 - TRAIN_PERC - VAL_PERC. Validation also chooses the post-processing:
                        # 30 instead of 10 volumes +0.007-0.009 Dice on the phantom, 3x the training
                        # cases +0.017-0.019 (twenty-sixth round), so the split stays 60 / 20 / 20
STRATIFY_SPLIT = True   # spread clot-free cases over all cohorts (so false alarms get measured)
SPLIT_FILE = None       # your own split instead: JSON {"CS1": "Training", ...} or CSV rows case,cohort
                        # (every case named once; Training / Validation / Testing)
GROUP_BY = None         # a <case>.json sidecar field, e.g. "source" or "site": each group stays in one cohort
FOLD = None             # k (0-based) for an ensemble: the same Testing cohort, the other cases dealt into
                        # (TRAIN_PERC + VAL_PERC) / VAL_PERC = 4 seeded folds and fold k the Validation
                        # cohort (nnU-Net's cross-validation folds); the network starts from RANDOM_SEED + k.
                        # Train FOLD = 0, 1, 2, 3, then test the runs together (TEST_RUN below). None =
                        # the one split above

# --------------------------------------------------------------------------
# Slicing and augmentation (stages 2, 3)
# --------------------------------------------------------------------------
INPUT_SHAPE = (256, 256, 2)      # (rows, cols, channels); channels = number of modalities
TARGET_SAMPLE_SIZE_AUG_TRAIN = 20000
TARGET_SAMPLE_SIZE_AUG_VAL = 4000
AUG_P = 0.8                      # probability that a sample is augmented at all
AUGMENTATION = "strong"          # "standard": flips, brightness/contrast, gamma, blur, CLAHE;
                                 # "strong": + rotation/scaling, noise and per-modality HU shifts;
                                 # "domain": the same from wider ranges + sharpening, low resolution
                                 # (the cpu preset's is "standard": +0.029 [+0.017, +0.043] there, thirty-
                                 # seventh round; at the demo scale -0.013 [-0.039, +0.010], twelfth round)
POSITIVE_FRACTION = 0.5          # share of augmented samples drawn from slices with clot
HARD_NEGATIVE_FRACTION = 0.25    # share of the clot-free samples drawn from hard negatives: slices
                                 # next to a clot and slices with the most bright (vessel, calcium) pixels.
                                 # 0.5 (demo, 3 seeds): 2 instead of 5 of 24 controls with an alarm, but the
                                 # clots that are not hyperdense -0.037 [-0.083, -0.007] (README lever table);
                                 # with CLOT_APPEARANCE_AUG 1.0 it is the demo preset's (see PRESETS). 0 at
                                 # the cpu preset: +0.002 [-0.016, +0.021], 2.0 vs 0.5 of 16 controls with
                                 # an alarm (thirty-sixth round)
POSITIVE_SAMPLING = "slice"      # how the clot samples are spread: "slice" = every clot slice alike (a
                                 # 30-slice ICA clot gets 10x the samples of a 3-slice M2 clot); "case" =
                                 # every clot case gets the same share, cycling through its own clot slices.
                                 # "case" scored +0.011 [-0.005, +0.028] (CPU scale, 2 seeds, eighth round);
                                 # with today's defaults +0.029 [+0.011, +0.050] (cpu preset, 3 seeds,
                                 # twenty-eighth round): the cpu preset's. In the README demo 0.07 lower on
                                 # each of 2 seeds (twenty-ninth round): the demo keeps "slice"
CLOT_APPEARANCE_AUG = 0.5        # share of clot samples whose clot intensity is moved per modality by an
                                 # offset from CLOT_APPEARANCE_HU, in every 2.5D context plane; the mask is
                                 # unchanged (not every clot is hyperdense). 0 = off. 0.5 on NCCT alone: the
                                 # clots that are not hyperdense +0.060 [+0.015, +0.112], all clot cases
                                 # +0.011 [-0.006, +0.030], 2 vs 1 of 24 controls with an alarm (demo scale,
                                 # 3 seeds; sixteenth round). 0.25 at the cpu preset: the clots under 10 HU
                                 # of NCCT contrast -0.062 [-0.113, -0.018] (thirty-third round); 0.75 there:
                                 # -0.003 [-0.016, +0.012], the clear clots -0.011 [-0.020, -0.002] (thirty-fourth)
CLOT_APPEARANCE_HU = {           # per modality, the range of HU offsets a clot's intensity moves by; a
    "NCCT": (-30.0, 10.0),       # modality left out (or with no HU window) stays. NCCT: a hyperdense clot
}                                # (45-75 HU) becomes iso- or hypodense, as 30-50% of clots are. Adding
                                 # "CTA": (-20.0, 60.0) (a more or less pervious clot) gave 5 instead of 1
                                 # of 16 controls a false alarm (fifteenth round); "CTA": (-20.0, 0.0) (a
                                 # clot as faint on the CTA as the ones the cpu preset misses) -0.025
                                 # [-0.042, -0.010] at the cpu preset, the faint clots too (thirty-first round)
SYNTHETIC_CLOT_AUG = 0.0         # share of the Training clot samples that are clot-free slices with a clot
                                 # drawn into an opacified artery (CTA lumen 150-550 HU replaced by the clot's
                                 # NCCT + 0-30 HU, the NCCT raised by -5..+30 HU: iso- to hyperdense; through
                                 # the 2.5D context where the artery runs on; clotseg/synthetic_clots.py): new
                                 # clot sites, calibres and densities. Needs a CTA in HU. 0 = off: 0.25 at
                                 # the cpu preset -0.015 [-0.049, +0.013], the clots under 10 HU of NCCT
                                 # contrast -0.080 [-0.177, -0.002], the others +0.014 [-0.000, +0.029],
                                 # 3.0 vs 0.5 of 16 controls with an alarm (thirty-sixth round)
MODALITY_DROPOUT = 0.0           # share of training samples in which one modality (all its context slices) is
                                 # blanked, so the network learns to find a clot from CTA alone and from NCCT
                                 # alone (ModDrop); validation and testing always see every modality. 0 = off:
                                 # 0.25 gave -0.014 [-0.028, +0.000], -0.025 before post-processing
                                 # (fourteenth round)
NUM_WORKERS = 0                  # CPU processes for augmentation; 0 = all cores (1 for small jobs)
CONTEXT_SLICES = 1               # 2.5D: also feed the k slices above and below of every modality as
                                 # channels (0 = plain 2D); edge slices repeat the first/last slice.
                                 # 1: an ICA or basilar clot runs through the slices, and only the slices
                                 # around it show where the bright lumen stops. Measured (demo scale, 3
                                 # seeds, 96 unseen clot cases): Dice +0.044 [+0.017, +0.073] over 0, and
                                 # on another generator's cohort 4/24 instead of 15/24 controls with a false
                                 # alarm; k = 2 scored the same as 1 (at today's cpu preset, with its CTA
                                 # window, it lost -0.043 [-0.067, -0.023]: thirty-fifth round). Trained
                                 # on another generator (small, short clots) 0 and 1 report the same after
                                 # the tuned post-processing
                                 # (demo, 3 seeds: -0.004 [-0.029, +0.023]; CPU scale, 2 seeds: +0.022
                                 # [-0.004, +0.056]), 1 with fewer false alarms (sixth round). 2 vs 1 with
                                 # today's defaults (demo, 3 seeds): -0.008 [-0.029, +0.010], on the clots
                                 # that are not hyperdense -0.073 [-0.135, -0.026] (nineteenth round).
                                 # A gap in a 2D slice import (sidecar slice_gaps) counts as a volume edge
SYMMETRY_CHANNELS = False        # also feed every input plane mirrored left-right about the head's midline
                                 # (each pixel beside its contralateral counterpart, as a reader compares
                                 # hemispheres; DeepSymNet finds occlusions from CTA asymmetry): doubles the
                                 # channels. The midline is the mean column of each slice's tissue pixels
PATCH_SIZE = None                # (rows, cols): train on random patches of the slices, a clot slice cropped
                                 # around its clot (nnU-Net style); validation and testing see whole slices.
                                 # None = train on whole slices. (96, 96) in batches of 16 at the cpu preset's
                                 # compute: -0.050 [-0.080, -0.023], the faint clots -0.110 (thirty-fourth round)

# --------------------------------------------------------------------------
# Model (stage 4)
# --------------------------------------------------------------------------
MODEL = "unet"                   # "unet" (CT-ClotSeg's 2D U-Net) or "resunet" (residual encoder, nnU-Net ResEnc style):
                                 # at the cpu preset's 20 minutes -0.006 [-0.025, +0.012], 1.6x the time per
                                 # step (2 unseen seeds, twenty-ninth round): "unet" stays
BASE_FILTERS = 32                # encoder filters 32-64-128-256
DEPTH = 3                        # number of poolings
DROPOUT = 0.1                    # 0: -0.006 [-0.037, +0.021] on another generator (thirteenth round);
                                 # the demo on a faster machine +0.009 [-0.002, +0.020], the clots that
                                 # are not hyperdense -0.010 (twenty-fifth round): 0.1 stays. 0 at the cpu
                                 # preset: -0.020 [-0.040, -0.003], the faint clots -0.052 (thirty-fourth round)
DROPOUT_KIND = "standard"        # "standard" (single activations, CT-ClotSeg's) or "spatial" (whole feature
                                 # maps, SpatialDropout2D): at the cpu preset (2 seeds) +0.006 [-0.012, +0.025],
                                 # 3x the false alarms before post-processing (twenty-eighth round)
DEEP_SUPERVISION = False         # also train the decoder's coarser levels (1/2, 1/4 size) against the
                                 # pooled mask, weights 1/2**k (nnU-Net); the saved model keeps only
                                 # the full-size output, so testing is unchanged. Off: at the demo scale
                                 # (2 seeds) Dice -0.012 [-0.041, +0.015], fewer FP, ~25% slower CPU steps;
                                 # at the CPU scale (2 seeds, seventh round) -0.003 [-0.029, +0.019]
NORMALIZATION = "batch"          # "batch" (CT-ClotSeg's BatchNormalization) or "instance" (nnU-Net's:
                                 # each feature map normalised over its own image, at training and testing).
                                 # Not recommended yet: trained on patches and tested on whole slices it
                                 # scored -0.052 [-0.081, -0.024] at the CPU scale (seventh round)
EXTRA_WINDOWS_HU = {}            # per modality, a narrower HU window the network also sees, e.g.
                                 # {"CTA": (0.0, 200.0)}: the model derives it from that modality's channels
                                 # (inside its WINDOWS_HU) as extra input channels, so slicing, augmentation
                                 # and testing are unchanged, while the WINDOWS_HU channel keeps lumen, clot
                                 # and calcium apart. The cpu preset's {"CTA": (0.0, 200.0)}: +0.022
                                 # [+0.001, +0.047], the clots under 10 HU of NCCT contrast +0.095 [+0.041,
                                 # +0.152], 0.5 vs 2.5 of 16 controls with an alarm; the NCCT's 10-90 HU
                                 # -0.017 [-0.051, +0.015]; the CTA window in the demo preset -0.121
                                 # [-0.175, -0.067] (thirty-second round), so off by default. The preset's
                                 # value skips a cohort without a CTA window holding 0-200 HU; a value of
                                 # your own must apply. The CTA's 0-120 HU did no better than 0-200:
                                 # -0.005 [-0.025, +0.012] (thirty-third round)
INITIAL_MODEL = None             # start training from a trained model's weights instead of random ones
                                 # (transfer learning): a .keras file or a run folder (its
                                 # Best_Model/model.keras), e.g. your model of an earlier cohort (README
                                 # "Your own data"). Its MODEL, BASE_FILTERS, DEPTH, NORMALIZATION,
                                 # channels (modalities x (2 CONTEXT_SLICES + 1)) and NUM_CLASSES must be
                                 # yours; its rows and cols need not be. None = random initialisation.
                                 # From a 5-minute phantom model: -0.024 [-0.063, +0.011] on another
                                 # generator's cohort (thirteenth round), so not a default
NUM_CLASSES = 1                  # 1 = sigmoid clot mask; >1 = softmax over classes
TARGET_NAME = "clot"             # what the masks mark, used in logs and reports ("hemorrhage" for an ICH cohort)

# --------------------------------------------------------------------------
# Training (stage 4)
# --------------------------------------------------------------------------
LOSS = "bce_dice"                # "dice", "bce_dice", "bce_slice_dice" (half the Dice per clot slice: small clots
                                 # weigh as much as large ones; -0.009 [-0.040, +0.023] at the CPU scale over
                                 # 2 seeds, 3x the network's false positives; at today's cpu preset on 2 unseen
                                 # seeds +0.008 [-0.012, +0.032], the faint clots +0.052 [-0.008, +0.123], but
                                 # 5.5 of 16 controls with an alarm: thirty-first round; with the cpu preset's
                                 # CTA window -0.006 [-0.022, +0.010], the faint clots -0.027: thirty-fourth
                                 # round), "tversky" (at the cpu preset -0.014 [-0.029, +0.001], no faint
                                 # clot more, 1.15 vs 0.42 FP per case before post-processing: thirty-fifth
                                 # round), "focal_tversky";
                                 # "dice" alone: +0.009 [-0.004, +0.022] at the demo scale, -0.014
                                 # [-0.039, +0.006] at the CPU scale, more false alarms (thirteenth round);
                                 # "topk_bce_dice" (nnU-Net's crossentropy of the 10% hardest pixels): -0.005
                                 # [-0.017, +0.005] at the demo scale, +0.003 [-0.017, +0.021] at the CPU scale,
                                 # more false alarms at both (fourteenth round)
LEARNING_RATE = 1e-3
LR_SCHEDULE = "cosine"           # "cosine": warm-up then cosine decay over EPOCHS; "poly": nnU-Net's
                                 # polynomial decay (power 0.9); "plateau": halve on a val-Dice plateau.
                                 # With MAX_TRAINING_MINUTES the decay ends with the budget instead
                                 # (over the epochs that fit, re-estimated every epoch, at most EPOCHS)
WARMUP_EPOCHS = 1                # linear warm-up from 1% of LEARNING_RATE ("cosine" only)
EMA_MOMENTUM = None              # e.g. 0.99: validate, pick and save the exponential moving average of
                                 # the weights (Polyak averaging, ~1/(1-m) steps) instead of the last
                                 # step's weights; None = off
EPOCHS = 100
BATCH_SIZE = 16
EARLY_STOPPING_PATIENCE = 15     # epochs without better validation Dice
REDUCE_LR_PATIENCE = 5           # "plateau" schedule only
MAX_TRAINING_MINUTES = None      # stop after the epoch that would cross this wall-clock budget;
                                 # "cosine" / "poly" then decay over the budget (see LR_SCHEDULE)
MIXED_PRECISION = "auto"         # "auto" = on when a GPU is present; True / False to force
JIT_COMPILE = "auto"             # XLA; "auto" = on under JAX, under TensorFlow only on a GPU (on the CPU
                                 # TF's XLA halves the U-Net's training speed), off under torch
RESUME = False                   # continue the latest unfinished run from its last checkpoint
DISTRIBUTION = None              # None = one device; "data_parallel" = all local GPUs (and hosts), see README

# --------------------------------------------------------------------------
# Testing (testing.py)
# --------------------------------------------------------------------------
TEST_RUN = None                  # run folder name under TRAININGS_DIR; None = latest. A list of run names
                                 # is an ensemble: their probabilities averaged (the runs of the FOLDs of
                                 # one split, or any runs for --input-dir cases), with the post-processing
                                 # values set below or the defaults, into Trainings/Ensemble_<k>runs_<hash>/.
                                 # FOLD 0, 1, 2 of 50 phantom cases: 0.760, +0.018 [+0.012, +0.025] Dice
                                 # over the three folds, controls with an alarm 6.3 -> 0 of 24 (twenty-
                                 # seventh round); it costs one training per member
TUNE_POSTPROCESSING = True       # after training, choose the seven settings below on the Validation
                                 # volumes (saved as <run>/postprocessing.json)
# None = the run's validation-tuned choice (0.5 / False / 0 / 0 / 0 / 0 / False when the run has none;
# MAX_VESSEL_DISTANCE_MM and MAX_COMPONENT_CTA_HU are set, so the tuner holds them unless they are None);
# a value here overrides it, and at training time the tuner holds it and chooses the others given it
# (e.g. THRESHOLD = 0.5, nnU-Net's fixed argmax, with the component filters chosen for 0.5).
THRESHOLD = None                 # probability above which a voxel is clot
TTA_FLIPS = None                 # average predictions over horizontal/vertical flips. Left to the tuner:
                                 # holding it off at the cpu preset gave +0.007 [-0.010, +0.028] on 2 unseen
                                 # seeds and the same on a development cohort (thirtieth round)
MIN_COMPONENT_VOXELS = None      # drop predicted 3D components smaller than this
MIN_COMPONENT_PEAK = None        # drop predicted 3D components whose highest probability stays under this
                                 # (hysteresis: THRESHOLD draws the outline, this decides what is a finding;
                                 # 0 = off)
MAX_VESSEL_DISTANCE_MM = 0.0     # drop predicted 3D components farther than this (mm) from contrast-filled
                                 # lumen (CTA >= 100 HU): a clot sits in an artery, a speck in the brain does
                                 # not (needs a CTA modality in HU). 0 = off; None = tuned from 0, 2 and 4 mm.
                                 # Off: on a development cohort the tuner did slightly better without it,
                                 # and 4 mm after the tuned filters cut FP components per case 0.14 -> 0.12
                                 # (without the tuned filters 2.20 -> 1.26, no clot lost; sixteenth round)
MAX_COMPONENT_CTA_HU = 130.0     # drop predicted 3D components whose median CTA value is above this (HU): a
                                 # thrombus is a filling defect (its NCCT HU plus 0-30 HU on CTA), lumen is
                                 # above 150 HU, so a brighter component is patent artery or calcified wall.
                                 # Does nothing without a CTA modality in HU. 0 = off; None = tuned from 0
                                 # and 130 HU. Held: over 11 models FP components per case 0.39 -> 0.20,
                                 # 262 vs 263 of 352 clots found (eighteenth round); raise it for
                                 # very pervious clots.
KEEP_LARGEST_COMPONENT = None    # keep only the largest predicted 3D component
SAVE_PROBABILITIES = False
BOOTSTRAP_RESAMPLES = 5000

# --------------------------------------------------------------------------
# Presets: named overlays selected with --preset NAME (or PRESET below).
# "demo" runs every stage on a 2-core CPU in under 10 minutes; "cpu" and
# "gpu" are the two scales of bench/quality.py (about 10 minutes of training
# on 2 CPU cores; 256 px and the full model on one GPU). A preset's
# INPUT_SHAPE sets rows and cols; its channel count follows MODALITY_PATTERNS,
# so the presets also serve a one-channel (or three-modality) cohort.
# --------------------------------------------------------------------------
PRESET = None
PRESETS = {
    "demo": {
        "INPUT_SHAPE": (128, 128, 2),
        "TARGET_SPACING_MM": (1.0, 1.0, 1.0),   # PREPROCESS: the 120 mm crop in 128 pixels
        "BASE_FILTERS": 16,                     # half the epochs of 8 filters in the 5 minutes, and better on
                                                # another generator's cohort ("Eleventh round"); on a
                                                # machine half as fast, 8 filters raise fewer false alarms
        "PATCH_SIZE": (64, 64),                 # 4x cheaper steps, every clot slice's patch holds its clot
        "TARGET_SAMPLE_SIZE_AUG_TRAIN": 1920,
        "TARGET_SAMPLE_SIZE_AUG_VAL": 320,
        "EPOCHS": 30,                           # an upper bound: the 5-minute budget ends it (~13 on the
                                                # first machine, 7-8 on one half as fast)
        "BATCH_SIZE": 32,
        "LEARNING_RATE": 2e-3,
        "EARLY_STOPPING_PATIENCE": 12,
        "MAX_TRAINING_MINUTES": 5,              # keeps the demo under 10 minutes on a slower machine
        "HARD_NEGATIVE_FRACTION": 0.5,          # with twice the clot-appearance augmentation: 5 seeds,
        "CLOT_APPEARANCE_AUG": 1.0,             # +0.035 [+0.011, +0.063], controls with an alarm 8 -> 1 of 40
                                                # (twenty-second round); at the cpu preset's 24 epochs they
                                                # lost -0.020 [-0.043, -0.002] (2 seeds, twenty-fourth round),
                                                # so the defaults stay
                                                # (no EXTRA_WINDOWS_HU: the cpu preset's CTA window lost
                                                # -0.121 [-0.175, -0.067] here, thirty-second round)
    },
    "cpu": {
        "INPUT_SHAPE": (128, 128, 2),
        "TARGET_SPACING_MM": (1.0, 1.0, 1.0),
        "MODEL": "unet",
        "BASE_FILTERS": 16,
        "PATCH_SIZE": (64, 64),
        "TARGET_SAMPLE_SIZE_AUG_TRAIN": 3200,
        "TARGET_SAMPLE_SIZE_AUG_VAL": 320,
        "EPOCHS": 24,                           # ~13 min on the first machine (15-17 fit in 20 min on one
                                                # half as fast); 40 epochs scored the same (CPU lever table;
                                                # 36-38 in the 20 min, 3 seeds: -0.001 [-0.010, +0.010],
                                                # twenty-fifth round)
        "BATCH_SIZE": 32,
        "LEARNING_RATE": 2e-3,                  # 4e-3: -0.003 [-0.015, +0.010], 2 unseen seeds (thirty-sixth round)
        "EARLY_STOPPING_PATIENCE": 24,
        "POSITIVE_SAMPLING": "case",            # 3 seeds, every model on every cohort: +0.029 [+0.011, +0.050],
                                                # the clots that are not hyperdense +0.048 [+0.007, +0.099],
                                                # 2 of 24 controls with an alarm (twenty-eighth round)
        "EXTRA_WINDOWS_HU": {"CTA": (0.0, 200.0)},  # the CTA's 0-200 HU beside its -100-600: 2 seeds, every
                                                # model on every cohort: +0.022 [+0.001, +0.047], the faint
                                                # clots +0.095 [+0.041, +0.152] (thirty-second round)
        "AUGMENTATION": "standard",             # no affine, noise or per-modality shift: 3 seeds (the third
                                                # fresh), every model on every cohort: +0.029 [+0.017, +0.043],
                                                # 89.3 vs 86.3 of 96 found, the faint clots +0.057 [+0.019,
                                                # +0.101], 2.0 vs 3.3 of 24 controls alarmed (thirty-seventh round)
    },
    "gpu": {
        "INPUT_SHAPE": (256, 256, 2),
        "TARGET_SAMPLE_SIZE_AUG_TRAIN": 20000,
        "TARGET_SAMPLE_SIZE_AUG_VAL": 4000,
        "BASE_FILTERS": 32,
        "DEPTH": 4,
        "EPOCHS": 12,
        "BATCH_SIZE": 32,
        "LEARNING_RATE": 2e-3,
        "EARLY_STOPPING_PATIENCE": 12,
    },
}
