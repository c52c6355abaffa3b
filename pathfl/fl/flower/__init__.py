"""Flower glue and process plumbing: the ServerApp/ClientApp, the ``flwr`` CLI wrapper, the
fast SuperNode, the site worker, process start/stop and lifetime, the local federation, and
``pathfl fl simulate`` on top of it. Built on :mod:`pathfl.fl` (never imported by it)."""
