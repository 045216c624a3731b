"""Check the budget ledger against its recorded replay: every seed, digest by digest.

`tests/unit/budget/replay.py` drives `BudgetLedger` through seeded random traffic (its
public API only) and digests every answer; `tests/unit/budget/data/ledger_replay.json`
holds the digests recorded before the ledger was rewritten by composition. The test
suite checks a fixed spread of them; this checks them all (about a minute on two cores)
and prints how many matched, or with --record writes them afresh from this checkout.

    python benchmarks/replay_ledger.py [--record] [--sequences 12000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an install

from tests.unit.budget.replay import DATA, SEQUENCES, VERSION, digest, recorded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="write the digests afresh")
    parser.add_argument("--sequences", type=int, default=SEQUENCES)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    with multiprocessing.Pool(args.jobs) as pool:
        digests = pool.map(digest, range(args.sequences), chunksize=50)
    took = time.monotonic() - started
    if args.record:
        DATA.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": VERSION, "sequences": len(digests), "digests": digests}
        DATA.write_text(json.dumps(data, indent=0) + "\n")
        print(f"recorded {len(digests)} sequences in {took:.1f} s to {DATA}")
        return 0
    want = recorded()
    matched = sum(a == b for a, b in zip(digests, want, strict=False))
    differ = [seed for seed, (a, b) in enumerate(zip(digests, want, strict=False)) if a != b]
    print(f"{matched} of {len(want)} recorded sequences matched ({took:.1f} s)")
    if differ:
        print(f"differ: {differ[:20]}{' ...' if len(differ) > 20 else ''}")
    return 0 if matched == len(want) == len(digests) else 1


if __name__ == "__main__":
    sys.exit(main())
