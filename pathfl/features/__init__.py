"""Tile feature extraction: encoder registry (:mod:`~pathfl.features.encoders`), tile reading
(:mod:`~pathfl.features.dataset`), batched inference (:mod:`~pathfl.features.inference`), the
features HDF5 format (:mod:`~pathfl.features.h5`) and the batch pipeline
(:mod:`~pathfl.features.pipeline`). Import the submodules; this package imports nothing heavy."""
