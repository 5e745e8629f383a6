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


def test_data_commands_version_a_folder(tmp_path):
    assert cli('init', tmp_path/'p').returncode == 0
    incoming = tmp_path/'p/incoming'; incoming.mkdir()
    (incoming/'a.csv').write_text('x\n1\n')
    assert cli('data', '--dir', tmp_path/'p', 'add', incoming, '--no-progress').returncode == 0
    out = cli('data', '--dir', tmp_path/'p', 'commit', '-m', 'first')
    assert out.returncode == 0 and 'Committed raw' in out.stdout
    (incoming/'b.csv').write_text('y\n2\n')
    cli('data', '--dir', tmp_path/'p', 'add', incoming, '--no-progress')
    cli('data', '--dir', tmp_path/'p', 'commit', '-m', 'second')
    log = cli('data', '--dir', tmp_path/'p', 'log')
    assert log.stdout.count('files') == 2 and 'second' in log.stdout.splitlines()[0]
    diff = cli('data', '--dir', tmp_path/'p', 'diff', 'latest~1', 'latest')
    assert '+ b.csv' in diff.stdout and '1 added, 0 removed, 0 changed' in diff.stdout
    out = cli('data', '--dir', tmp_path/'p', 'checkout', 'latest~1', tmp_path/'old')
    assert out.returncode == 0 and sorted(p.name for p in (tmp_path/'old').iterdir()) == ['a.csv']
    bad = cli('data', '--dir', tmp_path/'p', 'checkout', 'cafe1234', tmp_path/'x')
    assert bad.returncode == 1 and "has no version 'cafe1234'" in bad.stderr


def test_sweep_runs_a_wandb_config_with_the_local_engine(tmp_path):
    assert cli('init', tmp_path/'p').returncode == 0
    (tmp_path/'p/sweep.yaml').write_text('method: grid\nmetric: {name: valid_accuracy, goal: maximize}\n'
                                        'parameters:\n  lr: {values: [0.003, 0.01]}\n  epochs: {value: 1}\n')
    out = cli('sweep', 'sweep.yaml', '--apply', cwd=tmp_path/'p')
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('COMPLETE') == 2 and 'best valid_accuracy' in out.stdout
    assert 'sweep engine: local' in out.stdout and "stage 'train' now runs with" in out.stdout
    assert (tmp_path/'p/.neuronb/sweeps.db').exists()
    from neuronb.pipeline.project import load_project
    train = load_project(tmp_path/'p').stage('train').parameters
    assert train['epochs'] == 1 and train['lr'] in (0.003, 0.01)
    assert '# neuronb pipeline' in (tmp_path/'p/pipeline.yaml').read_text()   # comments kept
    (tmp_path/'p/bad.yaml').write_text('method: grid\nparameters:\n  lr: {values: [1]}\n')
    bad = cli('sweep', 'bad.yaml', cwd=tmp_path/'p')
    assert bad.returncode == 1 and 'metric' in bad.stderr and 'Traceback' not in bad.stderr


@pytest.fixture
def labeled_project(tmp_path):
    "A project whose `digits` dataset has 12 rendered digits, and a crowd table about them (3 workers each)."
    from neuronb.data.digits import render_digits
    assert cli('init', tmp_path/'p').returncode == 0
    truth = render_digits(tmp_path/'raw', n=12)
    assert cli('data', '--dir', tmp_path/'p', 'add', tmp_path/'raw', '-d', 'digits', '--no-progress').returncode == 0
    assert cli('data', '--dir', tmp_path/'p', 'commit', '-d', 'digits', '-m', 'twelve').returncode == 0
    rows = [f"{f},w{w},{l if w else (l + 1) % 10}" for f, l in zip(truth.file, truth.label) for w in range(3)]
    (tmp_path/'crowd.csv').write_text('task,worker,label\n' + '\n'.join(rows + ['elsewhere.png,w1,3']) + '\n')
    return tmp_path/'p', truth


def test_label_import_report_export_round_trip(labeled_project, tmp_path):
    proj, truth = labeled_project
    out = cli('label', '--dir', proj, 'import', tmp_path/'crowd.csv')
    assert out.returncode == 0 and 'Imported 36 annotations (crowd)' in out.stdout and '1 rows about files not in the dataset' in out.stdout
    out = cli('label', '--dir', proj, 'report')
    assert out.returncode == 0 and '12 of 12 items labeled, 36 events from 3 annotators' in out.stdout
    out = cli('label', '--dir', proj, 'export', tmp_path/'labels.json', '--format', 'labelstudio')
    assert out.returncode == 0 and 'Wrote the labels of 12 items' in out.stdout
    from neuronb.label.formats import read_labels
    back = read_labels(tmp_path/'labels.json')
    assert dict(zip(back.name, back.label)) == {f: str(l) for f, l in zip(truth.file, truth.label)}  # w0 outvoted


def test_label_import_refusals(labeled_project, tmp_path):
    proj, _ = labeled_project
    out = cli('label', '--dir', proj, 'import', tmp_path/'none.tsv')
    assert out.returncode == 1 and 'none.tsv does not exist' in out.stderr and 'Traceback' not in out.stderr
    assert cli('label', '--dir', proj, 'import', tmp_path/'crowd.csv').returncode == 0
    out = cli('label', '--dir', proj, 'import', tmp_path/'crowd.csv')
    assert out.returncode == 1 and 'was imported before' in out.stderr
    (tmp_path/'bad.csv').write_text('task,worker,label\na.png,w1,\n')
    out = cli('label', '--dir', proj, 'import', tmp_path/'bad.csv')
    assert out.returncode == 1 and 'bad.csv' in out.stderr and 'Traceback' not in out.stderr
    out = cli('label', '--dir', proj)
    assert out.returncode == 1 and 'neuronb label {serve,import,export,report}' in out.stderr


def test_label_serve_refuses_bad_annotators_before_starting(labeled_project):
    proj, _ = labeled_project
    out = cli('label', '--dir', proj, 'serve', '--annotators', 'alice,../bob')
    assert out.returncode == 1 and 'Traceback' not in out.stderr and '../bob' in out.stderr
    out = cli('label', '--dir', proj, 'serve', '--annotators', 'alice', '--overlap', '2')
    assert out.returncode == 1 and 'overlap' in out.stderr


def test_train_refusals(tmp_path):
    assert cli('init', tmp_path/'p').returncode == 0
    out = cli('train', tmp_path/'p', '--nproc', '0')
    assert out.returncode == 1 and '--nproc must be 1 or more' in out.stderr and 'Traceback' not in out.stderr
    out = cli('train', '--join', tmp_path/'nojob', '--nproc', '2')
    assert out.returncode == 1 and 'is not a distributed-training job folder' in out.stderr
    out = cli('train', tmp_path/'p', '-p', 'epochz=3')
    assert out.returncode == 1 and 'epochz' in out.stderr and 'Traceback' not in out.stderr
