"""Does the paper's claim hold on the board? Ours minus EfficientAD per track, from the committed entries.

    python benchmarks/paper_claims.py [--board leaderboard]

For every split where the board holds both an ``ours`` and an ``efficientad`` entry of the same training seed
and anomaly map (names ``<method>-quick[-local]-<track>[-seed<k>]``), prints ours minus EfficientAD per metric
with the paired 95% interval (the entries' stored bootstrap replicates: the same resampled photo groups),
the difference this pair could have detected (80% power, 5% level), the track's detectable difference (the
median over all of its entries' pairs, as the board prints it) and the paper's claimed gap beside them. No
recomputation: seconds. The intervals hold the test set's variation only; the training seed's is in
``benchmarks/ablate.py``'s table.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from impeller_bench.evaluation.significance import (
    detectable_difference,
    difference_interval,
)
from impeller_bench.leaderboard.board import (
    by_split,
    detectable_differences,
    load_entries,
)

# The paper's Tables 1-2: ours minus EfficientAD, percent points.
CLAIMED_GAP = {"image_auroc": 0.22, "pixel_auroc": 4.98, "pixel_pro_30": 1.97, "pixel_f1_max": 0.66}
ENTRY = re.compile(r"^(ours|efficientad)-quick(-local)?-(.+?)(-seed\d+)?$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", type=Path, default=Path("leaderboard"))
    args = parser.parse_args()
    for split, entries in by_split(load_entries(args.board)).items():
        pairs: dict[tuple, dict] = {}
        for entry in entries:
            match = ENTRY.match(entry["name"])
            if match:
                method, local, _, seed = match.groups()
                pairs.setdefault(("local" if local else "combined", seed or "-seed0"), {})[method] = entry
        complete = {key: p for key, p in sorted(pairs.items()) if len(p) == 2}
        if not complete:
            continue
        shown = [m for m in CLAIMED_GAP if entries[0]["metrics"][m] is not None]
        track = detectable_differences(entries, shown)
        print(f"\n{split}: track's detectable difference "
              + ", ".join(f"{m} {100 * track[m]:.2f}" for m in shown) + " (median over its pairs)")
        for (anomaly_map, seed), pair in complete.items():
            ours, efficientad = pair["ours"], pair["efficientad"]
            print(f"  {anomaly_map} map, seed {seed[len('-seed'):]}: ours minus EfficientAD")
            for m in shown:
                a, b = efficientad["_replicates"][m], ours["_replicates"][m]
                low, high = difference_interval(a, b)
                gap = ours["metrics"][m] - efficientad["metrics"][m]
                seen = "yes" if CLAIMED_GAP[m] / 100 >= track[m] else "no"
                print(f"    {m:<13} {100 * gap:+6.2f} [{100 * low:+6.2f}, {100 * high:+6.2f}]  pair detects "
                      f"{100 * detectable_difference(a, b):5.2f}  claimed {CLAIMED_GAP[m]:+.2f} "
                      f"(above the track's detectable difference: {seen})")


if __name__ == "__main__":
    main()
