"""The PRepBN from-scratch study (the application behind ``tools/prepbn_study.py``):
which norm schedule should a SLAB-PVT trained from scratch use, with which init?

Mask R-CNN from scratch on the synthetic shapes set (:mod:`mmslab.datasets`, the demo's
data at a smaller size) with the study's base config (``configs/study/
prepbn_study_base.py``: the demo detector -- the narrow SLAB-PVT, FPN / heads of 64
channels, AdamW 1e-3 -- with lighter RoI heads and an iteration-based schedule), one
backbone / norm schedule per *variant* (:mod:`prepbn.variants`) and several seeds; box /
mask AP (CocoMetric on the val split, mean +- sample std over the seeds) and the training
time per iteration as a markdown table (:mod:`prepbn.table`).

:mod:`prepbn.config` writes each run's config (the base config loaded and changed in
Python), :mod:`prepbn.runs` runs it (mmdet's ``tools/train.py``, what `mim train mmdet`
starts; BN recalibration with ``tools/recalibrate_bn.py`` + mmdet's ``tools/test.py``)
and keeps its result.
"""
