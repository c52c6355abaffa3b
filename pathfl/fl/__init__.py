"""Federated training over Flower.

``pathfl.fl`` holds the federation's logic (the aggregator's run in :mod:`.coordinator` and
its request/reply loop in :mod:`.server_loop`, aggregation rules, check-in statistics, the
federated linear-cox, the run config and its defaults, the run dir, a site's handlers and the
baselines); :mod:`pathfl.fl.flower` the Flower apps, process plumbing and ``simulate``;
:mod:`pathfl.fl.trust` audit, certificates, policies, update validation, differential privacy
and compatibility checks.

Imports go one way: ``fl.flower → fl → fl.trust`` (the trust modules import nothing else of
``fl``; the logic never imports the Flower apps or processes)."""
