"""Tile feature extraction: encoder registry (:mod:`~pathfl.features.encoders`), tile reading
(:mod:`~pathfl.features.dataset`), batched inference (:mod:`~pathfl.features.inference`), what
a run does (:mod:`~pathfl.features.plan`) and the batch pipeline
(:mod:`~pathfl.features.pipeline`). The features file format is
:mod:`pathfl.formats.features_h5`. Import the submodules; this package imports nothing heavy."""
