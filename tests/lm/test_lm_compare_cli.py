"""``lm compare`` on synthetic logs, and the CLI end to end (prepare -> train -> compare)."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from focus_optim.cli import main
from focus_optim.lm.compare import compare, crossing, load_curve
from focus_optim.lm.tokenizer import find_bpe_file


def _fake_run(run_dir, optimizer, label, losses, every=100, tokens_per_step=1000):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"label": label, "config": {"optimizer": optimizer}}))
    with open(run_dir / "log.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            step = i * every
            f.write(json.dumps({"kind": "train", "step": step, "loss": float(loss) + 0.1}) + "\n")
            rec = {
                "kind": "val",
                "step": step,
                "val_loss": loss,
                "tokens": step * tokens_per_step,
                "train_time": step * 0.5,
            }
            f.write(json.dumps(rec) + "\n")
    return run_dir


def test_steps_to_target_and_ratios(tmp_path, capsys):
    ref = _fake_run(tmp_path / "adamw", "adamw", "AdamW 6e-4", [10.0, 6.0, 4.0, 3.5, 3.2, 3.0])
    fast = _fake_run(tmp_path / "focus", "focus", "FOCUS 6e-4", [10.0, 5.0, 3.4, 3.0, 2.9, 2.8])
    bad = _fake_run(tmp_path / "signum", "signum", "Signum 6e-4", [10.0, 5.0, "nan", "nan", "nan", "nan"])
    result = compare([str(ref), str(fast), str(bad)], out_dir=tmp_path / "cmp", plot=True)

    assert result["target"] == 3.0 and result["reference"] == "AdamW 6e-4"
    rows = {r["label"]: r for r in result["runs"]}
    assert rows["AdamW 6e-4"]["steps_to_target"] == 500 and rows["AdamW 6e-4"]["speedup"] == 1.0
    assert rows["FOCUS 6e-4"]["steps_to_target"] == 300
    assert rows["FOCUS 6e-4"]["step_ratio"] == pytest.approx(0.6)
    assert rows["FOCUS 6e-4"]["speedup"] == pytest.approx(5 / 3)
    assert rows["FOCUS 6e-4"]["tokens_to_target"] == 300_000 and rows["FOCUS 6e-4"]["time_to_target"] == 150
    assert rows["Signum 6e-4"]["steps_to_target"] is None and rows["Signum 6e-4"]["final_val_loss"] is None
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][1]["steps_to_target"] == 300
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "FOCUS 6e-4" in out and "1.67x" in out and "target val loss 3.0000" in out
    with pytest.raises(ValueError, match=r"Invalid target: nan \(allowed: a finite val loss\)"):
        compare([str(ref), str(fast)], out_dir=tmp_path / "cmp2", target=float("nan"))


def test_crossing_interpolates_between_evaluations(tmp_path):
    run = _fake_run(tmp_path / "r", "focus", "r", [4.0, 3.0, 2.0])
    c = load_curve(run)
    assert crossing(c, 2.5) == {"step": 150.0, "tokens": 150_000.0, "time": 75.0}
    assert crossing(c, 5.0)["step"] == 0 and crossing(c, 1.0) is None
    assert math.isclose(c.best, 2.0) and c.label == "r" and c.optimizer == "focus"
    assert load_curve(run / "log.jsonl").val_loss.tolist() == [4.0, 3.0, 2.0]  # the log file itself


def test_a_file_that_is_not_a_run_log_is_named(tmp_path):
    stray = tmp_path / "compare.json"  # what `lm compare runs/lm/*` picks up after `--out runs/lm`
    stray.write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match=r"compare\.json: not a run \(a directory holding log\.jsonl"):
        load_curve(stray)
    binary = _fake_run(tmp_path / "bin", "focus", "b", [4.0, 3.0])
    (binary / "log.jsonl").write_bytes(gzip.compress(b"not text"))
    with pytest.raises(ValueError, match=r"bin/log\.jsonl is not a run log \(not UTF-8 text"):
        load_curve(binary)
    broken = _fake_run(tmp_path / "cfg", "focus", "c", [4.0, 3.0])
    (broken / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"cfg/config\.json is corrupt"):
        load_curve(broken)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("log.jsonl", "[1]\n", r"r/log\.jsonl:5: not a run-log record \(a JSON list, expected an object\)"),
        (
            "log.jsonl",
            '{"kind": "val", "step": 300}\n',
            r"r/log\.jsonl:5: a val record needs a step and a val_loss",
        ),
        ("log.jsonl", '{"kind": "val", "val_loss": 1.0}\n', r"r/log\.jsonl:5: a val record needs a step"),
        ("log.jsonl", '{"kind": "val", "step": 3, "val_loss": "x"}\n', r"r/log\.jsonl:5: a val record"),
        ("log.jsonl", '{"kind": "val", "step": null, "val_loss": 1}\n', r"r/log\.jsonl:5: .*\(step None"),
        (
            "config.json",
            "[]",
            r"r/config\.json is corrupt \(expected a JSON object whose 'config' is an object\)",
        ),
        (
            "config.json",
            '{"config": 5}',
            r"r/config\.json is corrupt \(expected a JSON object whose 'config'",
        ),
        ("config.json", '{"label": 1, "config": {}}', r"r/config\.json is corrupt \(label and config"),
    ],
)
def test_malformed_run_files_are_named_with_the_line(tmp_path, capsys, name, content, message):
    run = _fake_run(tmp_path / "r", "focus", "r", [4.0, 3.0])  # log.jsonl: 4 lines
    if name == "log.jsonl":
        with open(run / name, "a") as f:
            f.write(content)
    else:
        (run / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_curve(run)
    assert main(["lm", "compare", str(run), "--out", str(tmp_path), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert ": error: " in err and str(run / name) in err and "Traceback" not in err
    assert not (tmp_path / "compare.json").exists()


def test_a_line_cut_by_an_interruption_is_still_skipped(tmp_path):
    run = _fake_run(tmp_path / "r", "focus", "r", [4.0, 3.0])
    with open(run / "log.jsonl", "a") as f:
        f.write('{"kind": "val", "step": 2')
    assert load_curve(run).val_loss.tolist() == [4.0, 3.0]


@pytest.mark.skipif(find_bpe_file() is None, reason="the offline GPT-2 BPE file is not available")
def test_cli_prepare_train_compare(tmp_path, capsys):
    corpus = tmp_path / "wiki.jsonl.gz"
    texts = [f"Paragraph {i}: the cat sat on mat number {i}, then it walked to {i + 1}." for i in range(200)]
    corpus.write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts).encode()))
    data = tmp_path / "data"
    assert main(["lm", "prepare", str(corpus), "--out", str(data), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["lm", "prepare", str(corpus), "--out", str(data), "--workers", "1"]) == 0  # re-run: a no-op
    assert "already holds this dataset (same inputs and settings)" in capsys.readouterr().out
    assert main(["lm", "prepare", str(corpus), "--out", str(data), "--val-fraction", "0.5"]) == 2  # refuses
    assert "val_fraction: 0.25 then, 0.5 now" in capsys.readouterr().err

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        'model = "tiny"\ndtype = "float32"\nbatch_size = 2\nmax_steps = 3\nwarmup_steps = 1\n'
        'eval_interval = 3\neval_sequences = 4\ntensorboard = false\nprogress = false\ndevice = "cpu"\n'
        "[model_args]\nblock_size = 32\nvocab_size = 50304\n"
    )
    for name in ("adamw", "focus"):
        args = [
            "lm",
            "train",
            "--config",
            str(cfg),
            "--data-dir",
            str(data),
            "--out-dir",
            str(tmp_path / name),
            "--optimizer",
            name,
            "--lr",
            "1e-3",
            "--set",
            f"name='{name} run'",
        ]
        assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and math.isfinite(summary["val_loss"])
    assert main(["lm", "train", "--config", str(cfg), "--set", "warmup=3"]) == 2
    assert "valid:" in capsys.readouterr().err

    args = [
        "lm",
        "compare",
        str(tmp_path / "adamw"),
        str(tmp_path / "focus"),
        "--out",
        str(tmp_path),
        "--no-plot",
    ]
    assert main(args) == 0
    assert "focus run" in capsys.readouterr().out
    assert (tmp_path / "compare.json").is_file()
