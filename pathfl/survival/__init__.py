"""Survival MIL: clinical tables and patient bags (``data``), MIL models (``models``), survival
losses (``losses``), training/evaluation functions shared with the federation (``train``),
scikit-survival metrics (``metrics``), cross-validation (``cv``), run directories (``run``),
figures (``plots``), prediction and heatmaps (``inference``), synthetic cohorts
(``synthetic``). Nothing heavy is imported here."""
