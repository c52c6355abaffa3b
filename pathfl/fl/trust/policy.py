"""Site governance: a site's policy file says what it agrees to run on its data; a run that
breaks it is refused by the site (with the reasons logged in the site's audit log).

Example ``site_policy.yaml``::

    allowed_models: [abmil, meanpool]     # model kinds the site trains (omit = any)
    allowed_losses: [nll, cox]            # omit = any
    max_rounds: 20
    max_local_epochs: 5
    max_local_steps: 200                  # optimizer steps per round (the server's resolved value)
    require_dp: true                      # the run must enable client-side DP ...
    max_epsilon: 8.0                      # ... with a target epsilon no larger than this
    allowed_config_keys: [lr, dp_noise_multiplier]   # other keys the researcher may set

Run-config keys read (those the federation's run config uses): ``model``, ``loss``,
``num_rounds``/``rounds``, ``local_epochs``/``epochs``, ``steps_per_round`` (the steps per round
the server fixed at check-in; else ``local_steps``), ``dp`` (bool), ``dp_epsilon`` (target).
These keys are governed by their own rules and are never refused by ``allowed_config_keys``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pathfl.config import ConfigError, load_yaml

logger = logging.getLogger(__name__)

_ROUNDS_KEYS = ("num_rounds", "num-server-rounds", "rounds")
_EPOCHS_KEYS = ("local_epochs", "local-epochs", "epochs")
_DP_KEYS = ("dp", "dp_enabled", "privacy")
_EPS_KEYS = ("dp_epsilon", "dp-epsilon", "target_epsilon")
_STEPS_KEYS = ("steps_per_round", "local_steps", "local-steps")
#: Keys with a rule of their own (allowed_models, max_rounds, ...): always allowed as keys.
GOVERNED_KEYS = frozenset(
    k.replace("-", "_")
    for k in ("model", "loss", *_ROUNDS_KEYS, *_EPOCHS_KEYS, *_STEPS_KEYS, *_DP_KEYS, *_EPS_KEYS)
)


def _first(cfg: dict[str, Any], keys: tuple[str, ...], *, skip_zero: bool = False) -> Any:
    for k in keys:
        if cfg.get(k) is not None and not (skip_zero and cfg[k] == 0):
            return cfg[k]
    return None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


@dataclass
class SitePolicy:
    """What a site agrees to run. ``None`` / empty means "no restriction" for that item."""

    allowed_models: list[str] | None = None
    allowed_losses: list[str] | None = None
    max_rounds: int | None = None
    max_local_epochs: int | None = None
    max_local_steps: int | None = None
    require_dp: bool = False
    max_epsilon: float | None = None
    allowed_config_keys: list[str] | None = None
    source: str = field(default="(defaults)", compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "(dict)") -> SitePolicy:
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown policy key(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {}
        try:
            for k, v in data.items():
                if v is None:
                    continue
                if k in {"allowed_models", "allowed_losses", "allowed_config_keys"}:
                    if isinstance(v, str) or not isinstance(v, list):
                        raise ConfigError(f"{source}: {k} must be a list, got {v!r}")
                    kwargs[k] = [
                        str(x).replace("-", "_") if k.endswith("keys") else str(x) for x in v
                    ]
                elif k in {"max_rounds", "max_local_epochs", "max_local_steps"}:
                    kwargs[k] = int(v)
                    if kwargs[k] < 1:
                        raise ConfigError(f"{source}: {k} must be >= 1, got {v!r}")
                elif k == "max_epsilon":
                    kwargs[k] = float(v)
                elif k == "require_dp":
                    kwargs[k] = _truthy(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: bad policy value: {e}") from e
        return cls(**kwargs, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SitePolicy:
        """Read a policy YAML; a missing file, bad YAML or unknown key is a ConfigError."""
        return cls.from_dict(load_yaml(path), source=str(Path(path)))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}

    def check(self, run_config: dict[str, Any]) -> list[str]:
        """Violations of this policy by ``run_config`` (empty list = allowed). Each message
        names the key, the requested value and the limit."""
        cfg = {str(k).replace("-", "_"): v for k, v in run_config.items()}
        v: list[str] = []
        if self.allowed_config_keys is not None:
            extra = sorted(set(cfg) - set(self.allowed_config_keys) - GOVERNED_KEYS)
            if extra:
                v.append(
                    f"run config key(s) not allowed by site policy: {', '.join(extra)} "
                    f"(allowed: {', '.join(sorted(self.allowed_config_keys))})"
                )
        for key, allowed in (("model", self.allowed_models), ("loss", self.allowed_losses)):
            value = cfg.get(key)
            if allowed is not None and value is not None and str(value) not in allowed:
                v.append(f"{key} {value!r} not allowed (allowed: {', '.join(allowed)})")
        rounds = _first(cfg, tuple(k.replace("-", "_") for k in _ROUNDS_KEYS))
        if self.max_rounds is not None and rounds is not None and int(rounds) > self.max_rounds:
            v.append(f"rounds={int(rounds)} exceeds max_rounds={self.max_rounds}")
        epochs = _first(cfg, tuple(k.replace("-", "_") for k in _EPOCHS_KEYS))
        if (
            self.max_local_epochs is not None
            and epochs is not None
            and int(epochs) > self.max_local_epochs
        ):
            v.append(f"local_epochs={int(epochs)} exceeds max_local_epochs={self.max_local_epochs}")
        steps = _first(cfg, tuple(k.replace("-", "_") for k in _STEPS_KEYS), skip_zero=True)
        if self.max_local_steps is not None and steps is not None:  # noqa: SIM102
            if int(steps) > self.max_local_steps:
                v.append(
                    f"{int(steps)} optimizer steps per round exceed "
                    f"max_local_steps={self.max_local_steps}"
                )
        dp_on = _truthy(_first(cfg, _DP_KEYS))
        if self.require_dp and not dp_on:
            v.append("site requires differential privacy (dp=true) but the run has it off")
        if self.max_epsilon is not None and dp_on:
            eps = _first(cfg, tuple(k.replace("-", "_") for k in _EPS_KEYS))
            if eps is None:
                v.append(f"site requires dp_epsilon <= {self.max_epsilon} but none was given")
            elif float(eps) > self.max_epsilon:
                v.append(f"dp_epsilon={float(eps)} exceeds max_epsilon={self.max_epsilon}")
        for msg in v:
            logger.warning("policy %s: %s", self.source, msg)
        return v
