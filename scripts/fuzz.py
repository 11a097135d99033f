"""Longer fuzz runs than CI's: random AnnData through ``prepare``, random damage to a store through the reader.

    python scripts/fuzz.py --examples 2000            # both fuzzers, 2,000 examples each, a random seed
    python scripts/fuzz.py --examples 500 --only store --seed 3

Each example must either succeed exactly or be refused with one line (tests/helpers/fuzz.py states the oracles);
the first failure is printed with the smallest example hypothesis finds. Add it to tests/test_reliability_fuzz.py
as an ``@example`` or a plain test once fixed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from hydra import initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from cellssl.tasks import config_dir  # noqa: E402
from helpers import fuzz  # noqa: E402


def run(only: str, examples: int, hypothesis_seed: int | None) -> Counter:
    """Run the chosen fuzzers; the outcomes counted."""
    outcomes: Counter = Counter()
    options = {
        "max_examples": examples,
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
    }
    if only in ("both", "prepare"):
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=config_dir(), version_base="1.3")

        @settings(**options)
        @given(fuzz.anndata_cases())
        def prepare_inputs(case: fuzz.Case) -> None:
            outcomes["prepare " + fuzz.check_prepare(case)] += 1

        (prepare_inputs if hypothesis_seed is None else seed(hypothesis_seed)(prepare_inputs))()
    if only in ("both", "store"):
        with tempfile.TemporaryDirectory() as tmp:
            store, expected = fuzz.small_store(Path(tmp))

            @settings(**options)
            @given(fuzz.damages(store))
            def damaged_stores(damage: tuple) -> None:
                outcomes["store " + fuzz.check_damaged_store(store, expected, *damage)] += 1

            (damaged_stores if hypothesis_seed is None else seed(hypothesis_seed)(damaged_stores))()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="examples per fuzzer")
    parser.add_argument("--only", choices=("both", "prepare", "store"), default="both")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args()
    started = time.perf_counter()
    outcomes = run(args.only, args.examples, args.seed)
    print(f"{dict(outcomes)} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
