"""Print the reliability suite's figures as JSON, collected from the test modules' own lists.

    python tests/reliability/summary.py

The figures in tests/reliability/README.md come from here, so they cannot drift from what
the tests actually do. Counts describe what the suite exercises; "rows_lost" is the figure
the bad-input tests assert (they fail on any other value).
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.reliability import (  # noqa: E402
    test_bad_inputs,
    test_csv_errors,
    test_hostile_features,
    test_kill_resume,
    test_shard_inputs,
    test_signals_and_disk,
    test_stage2_faults,
)


def figures() -> dict:
    kill = test_kill_resume
    chain = len(kill.CHAIN_POINTS)  # test_kill_every_rerun_too: one kill per link of the chain
    # test_kill_resume.py and test_signals_and_disk.py are slow modules (minutes of subprocesses):
    # the default suite kills extract once (tests/e2e/test_cli_extract.py) and train twice.
    default_kills = 1 + len(test_stage2_faults.TRAIN_KILLS)
    slow_kills = len(kill.KILL_POINTS) + len(kill.SLOW_KILL_POINTS) + chain + 1  # + --overwrite between renames
    cases = test_bad_inputs.CASES
    return {
        "sigkill_points_default": ["extract after its first chunk (e2e)",
                                   *[f"train {h}" for h, _ in test_stage2_faults.TRAIN_KILLS]],
        "sigkill_points_slow": [p for p, _ in kill.KILL_POINTS + kill.SLOW_KILL_POINTS],
        "kills_survived_default_suite": default_kills,
        "kills_survived_with_slow_suite": default_kills + slow_kills,
        "random_kills": "at least 3 more under -m slow (random times, repeated until a run completes)",
        "sigterm_points": [p for p, _ in test_signals_and_disk.TERM_POINTS],
        "disk_full_faults": ["too little space at the start: refused before computing (tmpfs)",
                             "disk filled by another writer mid-run: ENOSPC (tmpfs)",
                             "ENOSPC writing a chunk's rows (simulated, in-process)",
                             "ENOSPC writing a chunk's marker (simulated, in-process)"],
        "settings_changes_refused": test_signals_and_disk.MISMATCHES,
        "bad_input_kinds_tried": len(cases),
        "bad_input_kinds": {kind: n for kind, n in _count(o for _, _, o, _ in cases).items()},
        "bad_shard_inputs_tried": {"webdataset tars": len(test_shard_inputs.TAR_CASES),
                                   "parquet cells": len(test_shard_inputs.PARQUET_CASES)},
        "structural_shard_errors_tried": len(test_shard_inputs.STRUCTURAL),
        "structural_source_errors_tried": len(test_csv_errors.STRUCTURAL),
        "per_row_source_problems_tried": len(test_csv_errors.PER_ROW),
        "model_dir_attacks_refused": len(test_stage2_faults.TAMPERING),
        "foreign_hdf5_inputs_refused": len(test_stage2_faults.FOREIGN_H5),
        "hostile_feature_files_refused": len(test_hostile_features.HOSTILE),
        "hostile_feature_file_kinds": test_hostile_features.HOSTILE,
        "rows_lost": 0,
    }


def _count(outcomes) -> dict:
    out: dict = {}
    for o in outcomes:
        key = "no row (hidden/special)" if o is None else (o or "valid")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


if __name__ == "__main__":
    print(json.dumps(figures(), indent=1))
