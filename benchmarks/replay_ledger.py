"""Check the budget ledger against its recorded replays: every seed, digest by digest.

`tests/unit/budget/replay.py` drives `BudgetLedger` through seeded random traffic (its
public API only) and digests every answer; `tests/unit/budget/data/` holds the digests
the ledger gave before it split the budget per user, of the mixed traffic (three uids,
leases that ask for no worker) and of the single-user traffic (`--single-user`). The test
suite checks a fixed spread of them; this checks them all (one to two minutes on two
cores) and prints how many matched: of the single-user traffic, all must; of the mixed
traffic, every sequence in which only one user held leases must (`Replay.one_user`), and
the others are counted apart (the split per user answers them differently). With
--record it writes them afresh from this checkout.

    python benchmarks/replay_ledger.py [--single-user] [--record] [--sequences 12000]
                                       [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an install

from tests.unit.budget.replay import (
    DATA,
    DATA_SINGLE,
    SEQUENCES,
    VERSION,
    recorded,
    replay,
    replay_single,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="write the digests afresh")
    parser.add_argument("--single-user", action="store_true", help="the single-user traffic")
    parser.add_argument("--sequences", type=int, default=SEQUENCES)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    single = args.single_user
    with multiprocessing.Pool(args.jobs) as pool:
        runs = pool.map(replay_single if single else replay, range(args.sequences), 50)
    took = time.monotonic() - started
    if args.record:
        path = DATA_SINGLE if single else DATA
        path.parent.mkdir(parents=True, exist_ok=True)
        digests = [run.digest for run in runs]
        data = {"version": VERSION, "sequences": len(digests), "digests": digests}
        path.write_text(json.dumps(data, indent=0) + "\n")
        print(f"recorded {len(digests)} sequences in {took:.1f} s to {path}")
        return 0
    want = recorded(single)
    same = [run.digest == w for run, w in zip(runs, want, strict=False)]
    compared = [seed for seed, run in enumerate(runs[: len(want)]) if single or run.one_user]
    differ = [seed for seed in compared if not same[seed]]
    print(
        f"{len(compared) - len(differ)} of {len(compared)} sequences compared matched "
        f"({took:.1f} s)"
    )
    if not single:
        others = len(runs) - len(compared)
        print(
            f"{others} with two users at once or a 0-worker lease not compared "
            f"({sum(same) - len(compared) + len(differ)} of them still match)"
        )
    if differ:
        print(f"differ: {differ[:20]}{' ...' if len(differ) > 20 else ''}")
    return 0 if not differ and len(runs) == len(want) else 1


if __name__ == "__main__":
    sys.exit(main())
