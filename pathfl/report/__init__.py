"""Self-contained HTML reports (``report.html``) of pathfl runs: :mod:`.html` has the
building blocks, :mod:`.markdown` the Markdown subset the demo report uses, :mod:`.sections`
the train, federated and demo reports."""
