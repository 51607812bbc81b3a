"""The one command line: every subcommand answers --help, old flag spellings still work, user
mistakes are one line with exit status 2; the recipes in configs/ load and validate."""
import subprocess
import sys

import pytest

from dns_jax import cli
from dns_jax.commands.common import normalize_argv
from dns_jax.config_files import ConfigFileError, apply_overrides, load_config, recipe_names, split_overrides
from dns_jax.training.config import NETWORKS, validate_config


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: dns-jax {name}")


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(name in out for name in cli.COMMANDS)
    with pytest.raises(SystemExit) as e:
        cli.main(["serach"])
    assert e.value.code == 2 and "invalid choice: 'serach'" in capsys.readouterr().err


def test_old_flag_spellings_are_translated():
    assert normalize_argv(["--query_ids", "a_b", "--topk=3", "--no-progress", "--noplots", "--out", "x.npz",
                           "--config.num_train_steps=5", "my_video.mp4"]) == [
        "--query-ids", "a_b", "--top=3", "--quiet", "--no-plots", "--output", "x.npz",
        "--config.num_train_steps=5", "my_video.mp4"]


def test_user_mistakes_are_one_line(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dns-jax convert: error:") and "missing.pth" in err[0]
    (tmp_path / "weights.pth").write_bytes(b"no torch file")
    assert cli.main(["convert", str(tmp_path / "weights.pth"), str(tmp_path / "out")]) == 2
    assert "cannot tell the network from the file name" in capsys.readouterr().err
    assert cli.main(["convert", "--network", "cg_student", str(tmp_path / "weights.pth"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_module_entry_points_run_the_same_command():
    out = subprocess.run([sys.executable, "-m", "dns_jax.convert", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m dns_jax.convert")


def test_overrides_are_typed_and_checked():
    rest, overrides = split_overrides(["--workdir", "w", "--config.learning_rate=1e-3", "--config.model.dims", "64",
                                       "--config.length_buckets=(8, 16)", "--config.augmentation=false"])
    assert rest == ["--workdir", "w"]
    c = apply_overrides(load_config("fg_att_student", "synthetic"), overrides)
    assert (c.learning_rate, c.model.dims, c.length_buckets, c.augmentation) == (1e-3, 64, (8, 16), False)
    with pytest.raises(ConfigFileError, match="did you mean 'learning_rate'"):
        apply_overrides(c, {"learning_rat": "1"})
    with pytest.raises(ConfigFileError, match="expected a int"):
        apply_overrides(c, {"batch_size": "many"})
    with pytest.raises(ConfigFileError, match="no such config file"):
        load_config("configs/nope.py")
    with pytest.raises(ConfigFileError, match="unknown recipe"):
        load_config("nope")
    with pytest.raises(ConfigFileError, match="takes no argument or 'synthetic'"):
        load_config("selector:big")


@pytest.mark.parametrize("network", NETWORKS)
def test_paper_recipes_validate_with_every_value_written_out(network):
    for arg in (None, "synthetic"):
        config = load_config(network, arg)
        assert validate_config(config).to_dict() == config.to_dict()    # nothing left to fill in
    paper = load_config(network)
    assert paper.dataset == "features" and paper.features.startswith("/path/to/")


def test_build_recipes():
    assert {"build", "fg_att_student", "fg_bin_student", "cg_student", "selector"} <= set(recipe_names())
    own, demo = load_config("build"), load_config("build:demo")
    assert own.coarse.model.netvlad_clusters == 64 and demo.coarse.model.netvlad_clusters == 16
    assert demo.fine.steps == 600 and demo.coarse.steps == 200 and own.fine.steps == 300 and own.teacher == "visil_f"


def test_an_interrupted_job_exits_143_with_one_line_and_a_user_error_exits_2(capsys):
    """Every command: a resumable job stopped by a signal (fileio.JobInterrupted, e.g. the build's
    BuildInterrupted) is `prog: interrupted: ...` and status 143; a user mistake one error line, 2."""
    from dns_jax.app.build import BuildInterrupted
    from dns_jax.commands.common import guarded

    def stopped():
        raise BuildInterrupted("training of fine stopped at step 3 of 10; rerun the same command to resume")
    assert guarded("dns-jax add", stopped) == 143
    err = capsys.readouterr().err
    assert err == "dns-jax add: interrupted: training of fine stopped at step 3 of 10; rerun the same command to resume\n"

    def bad():
        raise ValueError("no such video: 'x.mp4'")
    assert guarded("dns-jax build", bad) == 2
    assert capsys.readouterr().err == "dns-jax build: error: no such video: 'x.mp4'\n"
