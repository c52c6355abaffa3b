"""Federated training over Flower.

``pathfl.fl`` holds the federation's logic (the aggregator's run in :mod:`.coordinator`,
aggregation rules, check-in statistics, the federated linear-cox, the run config and its
defaults, the run dir, a site's handlers, ``simulate`` and its baselines);
:mod:`pathfl.fl.flower` the Flower apps and process plumbing; :mod:`pathfl.fl.trust` audit,
certificates, policies, update validation, differential privacy and compatibility checks."""
