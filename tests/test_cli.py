"""The `neuronb` command line: help texts, exit codes and one-line errors."""
import os, subprocess, sys
from pathlib import Path
import pytest

NEURONB = str(Path(sys.executable).parent/'neuronb')
ENV = {**os.environ, 'WANDB_MODE': 'disabled'}


def cli(*args, cwd=None):
    return subprocess.run([NEURONB, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


def test_help_lists_the_subcommands():
    out = cli('--help')
    assert out.returncode == 0
    for cmd in ('init', 'run', 'demo', 'status', 'runs', 'show'): assert cmd in out.stdout


@pytest.mark.parametrize('cmd,words', [('init', '--example'), ('run', 'STAGE.NAME=VALUE'), ('demo', '--port'),
                                       ('status', 'stale'), ('runs', '--limit'), ('show', 'produced each stage')])
def test_each_subcommand_explains_itself(cmd, words):
    out = cli(cmd, '--help')
    assert out.returncode == 0 and words in out.stdout


def test_run_outside_a_project(tmp_path):
    out = cli('run', tmp_path)
    assert out.returncode == 1
    assert 'no pipeline.yaml' in out.stderr and 'neuronb init' in out.stderr and 'Traceback' not in out.stderr


def test_init_refuses_a_folder_with_files(tmp_path):
    (tmp_path/'notes.txt').write_text('mine')
    out = cli('init', tmp_path)
    assert out.returncode == 1 and 'already has files' in out.stderr
    assert (tmp_path/'notes.txt').read_text() == 'mine' and len(list(tmp_path.iterdir())) == 1


def test_init_unknown_example(tmp_path):
    out = cli('init', tmp_path/'p', '--example', 'cats')
    assert out.returncode == 1 and "unknown example 'cats'" in out.stderr


def test_bad_pipeline_file_names_the_key(tmp_path):
    assert cli('init', tmp_path/'p').returncode == 0
    pfile = tmp_path/'p/pipeline.yaml'
    pfile.write_text(pfile.read_text().replace('parameters:', 'paramters:'))
    out = cli('run', tmp_path/'p')
    assert out.returncode == 1 and "unknown key 'paramters'" in out.stderr


def test_bad_override_syntax(tmp_path):
    assert cli('init', tmp_path/'p').returncode == 0
    out = cli('run', tmp_path/'p', '-p', 'epochs=3')
    assert out.returncode == 1 and 'STAGE.NAME=VALUE' in out.stderr


def test_status_and_runs_before_any_run(tmp_path):
    assert cli('init', tmp_path/'p').returncode == 0
    out = cli('status', tmp_path/'p')
    assert out.returncode == 0 and 'never ran successfully' in out.stdout and '6 of 6 stages would run' in out.stdout
    out = cli('runs', tmp_path/'p')
    assert out.returncode == 0 and 'No runs yet' in out.stdout
    out = cli('show', '--dir', tmp_path/'p')
    assert out.returncode == 1 and 'no runs recorded yet' in out.stderr
