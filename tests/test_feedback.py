"""The feedback loop end to end, through the real command line: a stakeholder answers pictures on the demo, a reviewer
accepts one and rejects the other, the next `neuronb run` joins the accepted one to the data and retrains, and the new
model's record says whose feedback it learned from."""
import json
import pytest
from test_own_images import QUICK, make_images, neuronb, stage_metrics


@pytest.fixture(scope='module')
def answered(tmp_path_factory):
    "A project over class folders, trained once; then the sponsor answers two new pictures on its demo (one right, one wrong)."
    from neuronb.pipeline.project import load_project
    from neuronb.demo import project_demo
    base = tmp_path_factory.mktemp('feedback')
    make_images(base/'photos', n=10)
    assert neuronb('init', base/'pets', '--data', base/'photos').returncode == 0
    run = neuronb('run', base/'pets', *QUICK)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    new = make_images(base/'new', n=1, seed=7)                          # pictures the model never saw
    pics = [base/'new'/n for n in sorted(new)][:2]
    app = project_demo(load_project(base/'pets'))                       # what the page's kernel builds
    app.visitor = 'sponsor'                                             # the name on the sponsor's link
    app.show_many([(p.name, p.read_bytes()) for p in pics])
    right, wrong = app.answers
    right.send(right.label)
    corrected = next(c for c in app.classes if c != wrong.label)
    wrong.send(corrected)
    app.log.close()                                                     # the page's kernel ends: its predictions are written
    return base/'pets', app, (right, wrong), corrected


def _json(out):
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_answers_wait_for_review_first_in_the_queue(answered):
    from neuronb.label.app import ReviewApp
    from neuronb.label.project import ProjectEvents
    from neuronb.serve import prediction_log
    root, app, (right, wrong), corrected = answered
    items = _json(neuronb('feedback', '--dir', root, 'list', '--json'))
    assert [(i['visitor'], i['state']) for i in items] == [('sponsor', 'pending')] * 2
    assert {i['prediction']: i['label'] for i in items} == {right.pid: right.label, wrong.pid: corrected}
    assert {i['prediction'] for i in items} <= set(prediction_log(app.store).id)   # each answers a logged prediction
    assert {i['model'] for i in items} == {app.cfg['version']}
    queue = ReviewApp(app.store, None, app.classes, ProjectEvents(app.store), 'lead')
    assert {h for _, h in queue.todo[:2]} == {i['item'] for i in items}   # stakeholders' pictures come first
    listed = neuronb('feedback', '--dir', root, 'list')
    assert listed.returncode == 0 and listed.stdout.count('sponsor') == 2 and 'pending' in listed.stdout


def test_bad_review_commands_say_what_to_do(answered):
    root, app, (right, _), _ = answered
    out = neuronb('feedback', '--dir', root, 'accept', 'f00dfeed')
    assert out.returncode == 1 and "no feedback item 'f00dfeed'" in out.stderr and 'feedback list' in out.stderr
    item = _json(neuronb('feedback', '--dir', root, 'list', '--json'))[0]['item']
    out = neuronb('feedback', '--dir', root, 'accept', item[:12], '--label', 'purple cow')
    assert out.returncode == 1 and "'purple cow' is not one of" in out.stderr and 'Traceback' not in out.stderr
    out = neuronb('feedback', '--dir', root)
    assert out.returncode == 1 and 'neuronb feedback {list,accept,reject,join}' in out.stderr
    assert {i['state'] for i in _json(neuronb('feedback', '--dir', root, 'list', '--json'))} == {'pending'}   # nothing decided


def test_the_next_run_trains_on_the_accepted_answer_and_says_whose_it_is(answered):
    root, app, (right, wrong), corrected = answered
    items = {i['prediction']: i['item'] for i in _json(neuronb('feedback', '--dir', root, 'list', '--json'))}
    before = stage_metrics(root)['label']['labelled_items']
    out = neuronb('feedback', '--dir', root, 'accept', items[wrong.pid][:12], '--as', 'lead')
    assert out.returncode == 0 and f"accepted as {corrected!r}" in out.stdout
    out = neuronb('feedback', '--dir', root, 'reject', items[right.pid][:12], '--as', 'lead')
    assert out.returncode == 0 and 'rejected' in out.stdout
    states = {i['prediction']: (i['state'], i['reviewer']) for i in _json(neuronb('feedback', '--dir', root, 'list', '--json'))}
    assert states == {wrong.pid: ('accepted', 'lead'), right.pid: ('rejected', 'lead')}
    run = neuronb('run', root, *QUICK)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "feedback: 1 picture from sponsor joined dataset" in run.stdout
    m = stage_metrics(root)
    assert m['label']['labelled_items'] == before + 1 and 'test_accuracy' in m['train']   # relabelled and retrained
    shown = _json(neuronb('models', '--dir', root, 'show', 'latest', '--json'))
    assert shown['feedback'] == {'items': 1, 'from': {'sponsor': 1}}
    show = neuronb('show', root)                                          # the project folder, as `neuronb run` takes it
    assert show.returncode == 0 and 'feedback in its data: 1 picture from stakeholders (sponsor)' in show.stdout
    again = neuronb('run', root, *QUICK)
    assert again.returncode == 0 and 'Everything is up to date' in again.stdout and 'feedback:' not in again.stdout
