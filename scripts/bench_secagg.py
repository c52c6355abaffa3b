#!/usr/bin/env python
"""Cost of Flower's legacy SecAgg+ workflow (flwr 1.42: ``SecAggPlusWorkflow`` +
``secaggplus_mod``) against the same legacy FedAvg round without it, in one process.

pathfl does not use SecAgg+ (docs/federation.md, "Secure aggregation"): it exists only for
Flower's legacy Strategy API. This measures what it would cost per round: Flower's own
``DefaultWorkflow`` runs a legacy ``FedAvg`` over N ClientApps whose ``fit`` returns a
model-sized update; the grid is an in-process stand-in (``InProcessGrid``, each message
deep-copied as a transport would serialise it), so the figures are the protocol's compute
(key agreement, Shamir shares, quantisation, masks, unmasking) and its message count, without
network or process overhead. Also checked: the securely aggregated model equals the plain
weighted mean up to quantisation.

    python scripts/bench_secagg.py --quick
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _flower() -> SimpleNamespace:
    from flwr.app import Context, Message, RecordDict
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid
    from flwr.supercore.task_identity import TaskIdentity

    return SimpleNamespace(
        Context=Context,
        Message=Message,
        RecordDict=RecordDict,
        ClientApp=ClientApp,
        NumPyClient=NumPyClient,
        secaggplus_mod=secaggplus_mod,
        ndarrays_to_parameters=ndarrays_to_parameters,
        parameters_to_ndarrays=parameters_to_ndarrays,
        LegacyContext=LegacyContext,
        ServerConfig=ServerConfig,
        FedAvg=FedAvg,
        DefaultWorkflow=DefaultWorkflow,
        SecAggPlusWorkflow=SecAggPlusWorkflow,
        Grid=Grid,
        TaskIdentity=TaskIdentity,
    )


def make_grid(fl: SimpleNamespace, apps: dict[int, Any]) -> Any:
    class InProcessGrid(fl.Grid):
        """Delivers each message to its node's ClientApp in this process."""

        def __init__(self) -> None:
            self.exchanges = 0
            self.ctx = {
                n: fl.Context(
                    run_id=1, node_id=n, node_config={}, state=fl.RecordDict(), run_config={}
                )
                for n in apps
            }

        def set_run(self, run: Any) -> None:
            pass

        @property
        def run(self) -> Any:
            return SimpleNamespace(run_id=1)

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return fl.Message(
                content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
            )

        def get_node_ids(self) -> list[int]:
            return list(apps)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list:
            self.exchanges += 1
            out = []
            for m in messages:
                n = m.metadata.dst_node_id
                out.append(copy.deepcopy(apps[n](copy.deepcopy(m), self.ctx[n])))
            return out

    return InProcessGrid()


def run_rounds(
    fl: SimpleNamespace, w0: list[np.ndarray], n_sites: int, *, secure: bool, rounds: int
) -> tuple[float, int, list[np.ndarray]]:
    """Seconds, grid exchanges and the final global model of ``rounds`` legacy FedAvg rounds."""

    class Site(fl.NumPyClient):
        def __init__(self, k: int) -> None:
            self.k = k

        def fit(self, params, config):
            return [p + 0.01 * (self.k + 1) for p in params], 100 + 10 * self.k, {}

    def app(k: int) -> Any:
        def client_fn(context: fl.Context) -> Any:
            return Site(k).to_client()

        return fl.ClientApp(client_fn=client_fn, mods=[fl.secaggplus_mod] if secure else [])

    grid = make_grid(fl, {100 + k: app(k) for k in range(n_sites)})
    strategy = fl.FedAvg(
        fraction_evaluate=0.0,
        min_fit_clients=n_sites,
        min_available_clients=n_sites,
        initial_parameters=fl.ndarrays_to_parameters(w0),
    )
    base = fl.Context(run_id=1, node_id=0, node_config={}, state=fl.RecordDict(), run_config={})
    ctx = fl.LegacyContext(
        context=base, config=fl.ServerConfig(num_rounds=rounds), strategy=strategy
    )
    fit = fl.SecAggPlusWorkflow(num_shares=n_sites, reconstruction_threshold=2) if secure else None
    t0 = time.perf_counter()
    fl.DefaultWorkflow(fit_workflow=fit)(grid, ctx)
    seconds = time.perf_counter() - t0
    return seconds, grid.exchanges, fl.parameters_to_ndarrays(_params(ctx))


def _params(ctx: Any) -> Any:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    return compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], True)


def pathfl_sizes() -> dict[str, int]:
    from pathfl.survival.train import TrainConfig, build_model

    out = {}
    for d in (1024, 1536):
        m = build_model(TrainConfig(), feature_dim=d)
        out[f"pathfl default (abmil, {d}-d features)"] = sum(p.numel() for p in m.parameters())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 sites, the pathfl model sizes")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    fl = _flower()
    fl.TaskIdentity.run_id, fl.TaskIdentity.task_id, fl.TaskIdentity.node_id = 1, 1, 1
    sizes = pathfl_sizes()
    if not args.quick:
        sizes["1,000,000 parameters"] = 1_000_000
    site_counts = [3] if args.quick else [3, 5]
    print(f"flwr legacy FedAvg, {args.rounds} rounds, in one process (no network):\n")
    print("| model | parameters | sites | plain s/round | SecAgg+ s/round | ratio "
          "| exchanges/round plain / SecAgg+ | max abs diff of the aggregate |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, n_params in sizes.items():
        w0 = [np.random.default_rng(0).normal(0, 0.05, n_params).astype(np.float32)]
        for n in site_counts:
            s0, e0, plain = run_rounds(fl, w0, n, secure=False, rounds=args.rounds)
            s1, e1, secure = run_rounds(fl, w0, n, secure=True, rounds=args.rounds)
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(plain, secure, strict=True))
            r = args.rounds
            print(
                f"| {name} | {n_params:,} | {n} | {s0 / r:.3f} | {s1 / r:.3f} | {s1 / s0:.1f} "
                f"| {e0 / r:.0f} / {e1 / r:.0f} | {diff:.1e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
