"""``osdsr schedule resshift``: print ResShift's eta schedule (defaults: the official x4 real-SR release).

    osdsr schedule resshift                      # T = 15, kappa 2, p 0.3, min noise 0.04, sqrt(eta_T) 0.99
    osdsr schedule resshift --T 4 --min-noise-level 0.2 --json
    osdsr schedule resshift --steps 5            # the steps a 5-step respaced sampler visits
"""

from __future__ import annotations

import argparse
import json

from osdsr.diffusion.resshift_config import ResShiftScheduleConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ResShiftScheduleConfig()
    parser.add_argument("name", choices=["resshift"], help="schedule to print")
    parser.add_argument("--T", "--num-timesteps", dest="num_timesteps", type=int, default=defaults.num_timesteps,
                        help=f"number of diffusion steps T (default {defaults.num_timesteps})")
    parser.add_argument("--kappa", type=float, default=defaults.kappa,
                        help=f"noise scale kappa (default {defaults.kappa})")
    parser.add_argument("--power", type=float, default=defaults.power,
                        help=f"schedule power p (default {defaults.power})")
    parser.add_argument("--min-noise-level", type=float, default=defaults.min_noise_level,
                        help=f"noise std kappa*sqrt(eta_1) of the first step (default {defaults.min_noise_level})")
    parser.add_argument("--etas-end", type=float, default=defaults.etas_end,
                        help=f"sqrt(eta_T) (default {defaults.etas_end})")
    parser.add_argument("--steps", type=int, help="also mark the steps a sampler with this many steps visits")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from osdsr.config import to_dict
    from osdsr.diffusion.resshift import ResShiftSchedule, respaced_indices

    config = ResShiftScheduleConfig(
        num_timesteps=args.num_timesteps,
        kappa=args.kappa,
        power=args.power,
        min_noise_level=args.min_noise_level,
        etas_end=args.etas_end,
    )
    schedule = ResShiftSchedule.from_config(config)
    visited = respaced_indices(config.num_timesteps, args.steps) if args.steps is not None else None
    sqrt_etas = schedule.sqrt_etas.tolist()
    etas = schedule.etas.tolist()
    if args.json:
        report = {"config": to_dict(config), "t": list(range(config.num_timesteps)), "eta": etas, "sqrt_eta": sqrt_etas}
        if visited is not None:
            report["sampled_t"] = visited
        print(json.dumps(report, indent=2))
        return 0
    print(f"ResShift eta schedule: {', '.join(f'{k} {v}' for k, v in to_dict(config).items())}")
    print("t is the network's step index (the paper's step t+1); noise std = kappa * sqrt(eta)")
    header = f"{'t':>3}  {'eta':>12}  {'sqrt(eta)':>12}  {'noise std':>12}"
    print(header + ("  sampled" if visited is not None else ""))
    for t, (eta, sqrt_eta) in enumerate(zip(etas, sqrt_etas)):
        row = f"{t:>3}  {eta:>12.8f}  {sqrt_eta:>12.8f}  {config.kappa * sqrt_eta:>12.8f}"
        print(row + ("  *" if visited is not None and t in visited else ""))
    return 0
