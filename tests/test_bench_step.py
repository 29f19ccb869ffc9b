"""``focus-optim bench-step``: the optimizer-step benchmark behind BENCHMARKS.md section 1."""

from __future__ import annotations

import json

from focus_optim.cli import main


def test_quick_run_times_the_chosen_rows(tmp_path):
    out = tmp_path / "step.json"
    rc = main(["bench-step", "--quick", "--reps", "1", "--warmup", "0", "--optimizers", "focus (fused",
               "torch adamw (foreach", "--json", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"focus (fused)", "torch AdamW (foreach)"}
    assert all(r["ms"] > 0 and r["x_roofline"] > 0 for r in rows.values())


def test_a_name_that_matches_no_row_is_an_error(capsys):
    assert main(["bench-step", "--quick", "--optimizers", "focus", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--optimizers nope: no row matches" in err and "focus (fused)" in err
