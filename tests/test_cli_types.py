"""Bad command-line values are one-line errors naming the argument, before any work starts."""

from __future__ import annotations

import pytest
import torch

from focus_optim.cli import main

NO_CUDA = not torch.cuda.is_available()


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "0"], "argument --threads: 0 (allowed: an integer >= 1)"),
        (["--max-cells", "-1"], "argument --max-cells: -1 (allowed: an integer >= 1)"),
        (["--chunk-rows", "0"], "argument --chunk-rows: 0 (allowed: an integer >= 1)"),
        (["--steps-per-launch", "x"], "argument --steps-per-launch: 'x' is not an integer"),
        (["--device", "bogus"], "argument --device: Invalid device 'bogus' (allowed: cpu, cuda"),
    ],
)
def test_toy_run_refuses_bad_numbers_and_devices(tmp_path, capsys, args, message):
    err = _usage_error(["toy", "run", "--figure", "2a", "--out", str(tmp_path / "t"), *args], capsys)
    assert message in err
    assert not (tmp_path / "t").exists()


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize(
    "argv",
    [
        ["toy", "run", "--figure", "2a", "--out", "OUT", "--device", "cuda"],
        ["mnist", "run", "--out", "OUT", "--device", "cuda:0"],
        ["bench-step", "--device", "cuda", "--quick"],
    ],
)
def test_cuda_without_a_gpu_is_named(tmp_path, capsys, argv):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert "CUDA is not available on this machine" in _usage_error(argv, capsys)


def test_output_paths_of_the_wrong_kind_are_refused_first(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    err = _usage_error(["toy", "run", "--figure", "2a", "--out", str(a_file)], capsys)
    assert f"argument --out: {a_file} exists and is not a directory" in err
    err = _usage_error(["bench-step", "--quick", "--json", str(tmp_path)], capsys)
    assert f"argument --json: {tmp_path} is a directory" in err


def test_mnist_and_regret_counts(tmp_path, capsys):
    err = _usage_error(["mnist", "run", "--out", str(tmp_path / "m"), "--num-lrs", "0"], capsys)
    assert "argument --num-lrs: 0 (allowed: an integer >= 1)" in err
    assert main(["toy", "regret", "--steps", "100", "--sequences", "2"]) == 2
    assert "Invalid steps: 100 (allowed: an integer >= 2 * fit_from = 200)" in capsys.readouterr().err


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
def test_lm_device_is_checked():
    from focus_optim.lm.distributed import resolve_device

    with pytest.raises(ValueError, match="Invalid device 'cuda': CUDA is not available"):
        resolve_device("cuda")


def test_lm_model_sizes_are_checked():
    from focus_optim.lm.model import model_config

    with pytest.raises(ValueError, match=r"Invalid model_args\.n_embd: 0 \(allowed: an integer >= 1\)"):
        model_config("tiny", n_embd=0)
    with pytest.raises(ValueError, match=r"Invalid model_args\.block_size: -4"):
        model_config("tiny", block_size=-4)
    with pytest.raises(ValueError, match=r"n_embd: 30 \(allowed: a multiple of n_head = 4\)"):
        model_config("tiny", n_embd=30, n_head=4)


def test_mnist_plot_names_a_store_of_another_sweep(tmp_path, capsys):
    import numpy as np

    from focus_optim.sweep import SweepSpec, run_sweep

    spec = SweepSpec(name="toy-fig2a", outer={"a": [1]}, inner={"b": [0]}, variables={"v": ()}, config={})
    run_sweep(spec, lambda cells, d: [{"v": np.zeros(1)} for _ in cells], tmp_path / "s", progress=False)
    assert main(["mnist", "plot", str(tmp_path / "s")]) == 2
    assert "is not an MNIST scan (its sweep is 'toy-fig2a')" in capsys.readouterr().err


def test_errors_name_the_subcommand_as_typed(tmp_path, capsys):
    """``focus-optim lm train: error: ...``, not ``focus-optim lm: error:``, for input errors
    raised inside the command (here a config path that is a directory)."""
    assert main(["lm", "train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("focus-optim lm train: error: ") and "Traceback" not in err, err
    assert main(["toy", "plot", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("focus-optim toy plot: error: ")


@pytest.mark.parametrize(
    ("argv", "command", "unknown"),
    [
        (["toy", "run", "--figures", "2a", "--out", "OUT"], "toy run", "--figures 2a"),
        (["lm", "sample", "RUN", "--bogus"], "lm sample", "--bogus"),
        (["--bogus", "list-optimizers"], "list-optimizers", "--bogus"),
    ],
)
def test_an_unknown_flag_is_reported_by_the_subcommand_it_was_given_to(
    tmp_path, capsys, argv, command, unknown
):
    argv = [str(tmp_path / a) if a in ("OUT", "RUN") else a for a in argv]
    err = _usage_error(argv, capsys)
    assert err.startswith(f"usage: focus-optim {command} "), err
    assert f"focus-optim {command}: error: unrecognized arguments: {unknown}" in err
    assert not (tmp_path / "OUT").exists()


def test_the_lm_lab_alone_reports_unknown_flags_by_subcommand_too(capsys):
    from focus_optim.lm.cli import main as lm_main

    with pytest.raises(SystemExit):
        lm_main(["compare", "RUN", "--bogus"])
    assert "focus-optim lm compare: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_counts_in_messages_agree_in_number():
    from focus_optim.cli_types import counted

    assert [counted(n, "cell") for n in (0, 1, 2)] == ["0 cells", "1 cell", "2 cells"]
