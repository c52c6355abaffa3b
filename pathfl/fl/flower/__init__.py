"""Flower glue and process plumbing: the ServerApp/ClientApp, the server's Grid loop, the
``flwr`` CLI wrapper, the fast SuperNode, the site worker, process start/stop and lifetime,
and the local federation used by ``pathfl fl simulate``."""
