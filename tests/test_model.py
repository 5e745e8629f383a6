"Saving and loading models safely (neuronb.train.model): round trip, refusals with clear messages, no unpickling."
import inspect, json, os, pickle, shutil
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

os.environ.setdefault('WANDB_MODE', 'disabled')
import neuronb.train.model as nm
from neuronb.core import ModelError, NeuronbError
from neuronb.train.model import build_model, load_model, model_version, predict_proba, preprocess, save_model

CFG = {'arch': 'simple_cnn', 'n_classes': 10, 'in_channels': 1, 'width': 8, 'classes': [str(i) for i in range(10)],
       'size': 32, 'mean': 0.2, 'std': 0.3}
INK = {**CFG, 'frame_ink': True}   # a model of handwriting: uploads are framed as its training digits were


@pytest.fixture
def saved(tmp_path):
    "A small model saved to tmp_path/'m', its config as written, and a batch to predict."
    torch.manual_seed(0)
    model = build_model(CFG)
    with torch.no_grad():   # non-trivial batch-norm statistics, so that they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d): m.running_mean.uniform_(-1, 1); m.running_var.uniform_(0.5, 2)
    cfg = save_model(model, {**CFG, 'metrics': {'valid_accuracy': np.float64(0.98)}, 'data_version': 'abc123'}, tmp_path/'m')
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, cfg, tmp_path/'m', x


def _break(folder, name):
    "A copy of the saved model folder, to break."
    dst = folder.parent/name
    shutil.copytree(folder, dst)
    return dst


def test_round_trip_identical_predictions(saved):
    model, cfg, folder, x = saved
    model2, cfg2 = load_model(folder)
    assert cfg2 == cfg
    assert not model2.training
    np.testing.assert_array_equal(predict_proba(model2, cfg2, x), predict_proba(model, cfg, x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_config_contents(saved):
    _, cfg, folder, _ = saved
    on_disk = json.loads((folder/'config.json').read_text())
    assert cfg['format'] == 'neuronb-model/1'
    assert cfg['metrics'] == {'valid_accuracy': 0.98} and cfg['data_version'] == 'abc123'
    assert on_disk == {k: v for k, v in cfg.items() if k != 'version'}, "the version is the bundle's hash, not in it"
    for k in ('classes', 'size', 'mean', 'std'): assert k in cfg
    manifest = json.loads((folder/'manifest.json').read_text())
    assert set(manifest['files']) == {'config.json', 'model.safetensors'}
    assert model_version(cfg) == nm.bundle_version(manifest) and len(model_version(cfg)) == 12
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'manifest.json', 'model.safetensors'], "no temp files left"


def test_save_requires_normalization_stats(tmp_path):
    cfg = {k: v for k, v in CFG.items() if k != 'mean'}
    with pytest.raises(ModelError, match="no 'mean'"): save_model(build_model(cfg), cfg, tmp_path/'m')


def test_tampered_weights_refused(saved):
    folder = _break(saved[2], 'tampered')
    w = folder/'model.safetensors'
    b = bytearray(w.read_bytes()); b[len(b) // 2] ^= 0x01; w.write_bytes(bytes(b))
    with pytest.raises(ModelError, match='changed or replaced after saving') as e: load_model(folder)
    assert str(folder) in str(e.value)


def _rewrite_config(folder, **changes):
    "Change config.json in `folder` (the manifest no longer vouches for it)."
    cfg = json.loads((folder/'config.json').read_text())
    (folder/'config.json').write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize('changes', [{'classes': [str(i) for i in range(9, -1, -1)]}, {'mean': 0.0}, {'std': [1.0]},
                                     {'metrics': {'valid_accuracy': 1.0}}, {'size': 16}])
def test_changed_config_refused_like_changed_weights(saved, changes):
    "The class list, the normalisation, the metrics: every byte of the config is part of the model."
    folder = _break(saved[2], 'edited'); _rewrite_config(folder, **changes)
    with pytest.raises(ModelError, match='config.json does not match its SHA-256 .*changed or replaced after saving') as e:
        load_model(folder)
    assert str(folder) in str(e.value) and 're-train' in str(e.value)


def test_interrupted_save_refused(saved):
    "The manifest is written last and removed first: a folder caught mid-save is refused as incomplete."
    folder = _break(saved[2], 'midsave'); (folder/'manifest.json').unlink()
    with pytest.raises(ModelError, match='no manifest.json, so it is not a complete neuronb model'): load_model(folder)
    folder = _break(saved[2], 'badmanifest')
    for text in ('{"files"', '[]', '{"files": {"config.json": {}}}'):
        (folder/'manifest.json').write_text(text)
        with pytest.raises(ModelError, match='manifest.json'): load_model(folder)


def test_shape_mismatch_refused(saved):
    folder = _break(saved[2], 'wider'); _rewrite_config(folder, width=16); nm.write_manifest(folder)
    with pytest.raises(ModelError, match='do not fit the architecture') as e: load_model(folder)
    assert 'vs architecture' in str(e.value) and 're-save' in str(e.value)


def test_missing_folder_and_files_refused(saved, tmp_path):
    with pytest.raises(ModelError, match='no model folder') as e: load_model(tmp_path/'nowhere')
    assert 'nowhere' in str(e.value)
    folder = _break(saved[2], 'noconfig'); (folder/'config.json').unlink()
    with pytest.raises(ModelError, match='config.json is missing'): load_model(folder)
    folder = _break(saved[2], 'noweights'); (folder/'model.safetensors').unlink()
    with pytest.raises(ModelError, match='model.safetensors is missing'): load_model(folder)


def test_bad_config_refused(saved):
    "A config rewritten and re-sealed with a new manifest is still checked itself."
    folder = _break(saved[2], 'badjson'); (folder/'config.json').write_text('{"format": '); nm.write_manifest(folder)
    with pytest.raises(ModelError, match='not valid JSON'): load_model(folder)
    folder = _break(saved[2], 'oldformat'); _rewrite_config(folder, format='fastai-pkl'); nm.write_manifest(folder)
    with pytest.raises(ModelError, match="expected 'neuronb-model/1'"): load_model(folder)
    folder = _break(saved[2], 'badarch'); _rewrite_config(folder, arch='evil'); nm.write_manifest(folder)
    with pytest.raises(ModelError, match='known architectures: resnet18, resnet34, resnet50, simple_cnn'): load_model(folder)
    assert issubclass(ModelError, NeuronbError)


class _Boom:
    "Unpickling this runs code: it creates the marker file."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (self.marker, 'w'))


def test_pickle_never_loaded(saved, tmp_path):
    marker = tmp_path/'PWNED'
    payload = pickle.dumps(_Boom(str(marker)))
    # a malicious pickle next to the real files is ignored
    folder = _break(saved[2], 'with_pth')
    (folder/'model.pth').write_bytes(payload); (folder/'learner.pkl').write_bytes(payload)
    model, _ = load_model(folder)
    assert not marker.exists()
    # a pickle in place of the weights is refused (hash), and still not unpickled
    folder = _break(saved[2], 'swapped'); (folder/'model.safetensors').write_bytes(payload)
    with pytest.raises(ModelError, match='changed or replaced'): load_model(folder)
    # even with a config vouching for it, the pickle is not a safetensors file: refused, not executed
    nm.write_manifest(folder)
    with pytest.raises(ModelError, match='not a readable safetensors file'): load_model(folder)
    assert not marker.exists()


def test_no_unpickling_path_in_source():
    import re
    src = inspect.getsource(nm)
    for bad in ('pickle.load', 'load_learner', 'np.load', 'import dill'): assert bad not in src, bad
    calls = re.findall(r'torch\.load\(([^)]*)\)', src)   # only for local pretrained .pth files, and only weights-only
    assert calls and all('weights_only=True' in c for c in calls), calls


def test_resnet18_round_trip(tmp_path):
    cfg = {**CFG, 'arch': 'resnet18'}
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():   # non-trivial batch-norm statistics, so that they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d): m.running_mean.uniform_(-1, 1); m.running_var.uniform_(0.5, 2)
    saved = save_model(model, cfg, tmp_path/'r18')
    model2, cfg2 = load_model(tmp_path/'r18')
    assert cfg2 == saved and cfg2['arch'] == 'resnet18'
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(predict_proba(model2, cfg2, x), predict_proba(model, cfg, x))
    assert isinstance(model2.maxpool, torch.nn.Identity) and model2.conv1.stride == (1, 1)
    # a config whose arch does not match the weights is refused, naming the difference
    _rewrite_config(tmp_path/'r18', arch='simple_cnn'); nm.write_manifest(tmp_path/'r18')
    with pytest.raises(ModelError, match='do not fit the architecture'): load_model(tmp_path/'r18')


def _light_seven(w=90, h=60):
    "A black 7 on white paper, RGB, not square, not 32 px."
    img = Image.new('RGB', (w, h), (250, 250, 245))
    ImageDraw.Draw(img).line([(25, 10), (65, 10), (40, 55)], fill=(10, 10, 10), width=6)
    return img


def test_preprocess_inverts_light_background_for_handwriting():
    x = preprocess(_light_seven(), INK)
    assert x.shape == (1, 1, 32, 32) and x.dtype == torch.float32
    raw = x[0, 0] * CFG['std'] + CFG['mean']   # back to 0..1
    assert raw[-3:, :3].mean() < 0.05 and raw[-3:, -3:].mean() < 0.05, "background is dark after inversion"
    assert raw[:3].mean() > 0.3, "the 7's bar is framed at the top, as training digits fill their frame"
    assert raw.max() > 0.8, "the strokes are bright"
    # same result from a white-on-black version of the same picture: the inversion is exact
    dark = Image.fromarray(255 - np.asarray(_light_seven()))
    torch.testing.assert_close(preprocess(dark, INK), x)


def test_preprocess_keeps_other_pictures_as_they_are():
    "Without frame_ink a picture is only decoded, resized and normalized: no inversion, no cropping."
    x = preprocess(_light_seven(), CFG)
    raw = x[0, 0] * CFG['std'] + CFG['mean']
    assert raw[-3:, :3].mean() > 0.9, "the light paper stays light"


def test_preprocess_other_modes_and_bad_input():
    for img in (_light_seven().convert('L'), _light_seven().convert('P'), _light_seven().convert('RGBA')):
        assert preprocess(img, CFG).shape == (1, 1, 32, 32)
    with pytest.raises(ModelError, match='PIL image or image bytes'): preprocess(np.zeros((32, 32)), CFG)


def test_model_module_imports_no_fastai():
    import subprocess, sys
    code = "import sys, neuronb.train.model; print([m for m in ('fastai', 'torchvision') if m in sys.modules])"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


@pytest.fixture(scope='module')
def imagenet_resnet18(tmp_path_factory):
    "A torchvision ResNet-18 state dict (random weights, 3 channels, 1000 classes) saved as torchvision ships its weights."
    tv = pytest.importorskip('torchvision.models')
    torch.manual_seed(0)
    model = tv.resnet18(weights=None)
    path = tmp_path_factory.mktemp('pretrained')/'resnet18-imagenet.pth'
    torch.save(model.state_dict(), path)
    return model, path


def test_local_pretrained_weights_start_training(imagenet_resnet18):
    from neuronb.train.learner import _model_for
    src, path = imagenet_resnet18
    cfg = {**CFG, 'arch': 'resnet18', 'stem': 'imagenet', 'pretrained': str(path)}
    model = _model_for(cfg, 'cpu')   # what train_classifier starts from
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.allclose(model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))   # RGB filters summed for gray input
    assert model.fc.weight.shape == (10, 512)   # a new head for 10 classes
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert load_model.__module__ == 'neuronb.train.model' and build_model(cfg) is not None   # 'pretrained' is ignored when building


def test_mismatched_or_unsafe_pretrained_files_are_refused(imagenet_resnet18, tmp_path):
    from neuronb.train.model import load_pretrained
    src, path = imagenet_resnet18
    with pytest.raises(ModelError, match=r"conv1.weight: file \(64, 3, 7, 7\) vs model \(64, 1, 3, 3\)"):
        load_pretrained(build_model({**CFG, 'arch': 'resnet18'}), path)   # the small stem: another layout
    with pytest.raises(ModelError, match='do not fit this architecture'): load_pretrained(build_model(CFG), path)
    with pytest.raises(ModelError, match='never downloads'): load_pretrained(build_model(CFG), tmp_path/'absent.pth')
    evil = tmp_path/'evil.pth'
    torch.save({'state_dict': src.state_dict(), 'payload': _Payload()}, evil)
    with pytest.raises(ModelError, match='refusing to unpickle'): load_pretrained(build_model({**CFG, 'arch': 'resnet18', 'stem': 'imagenet'}), evil)
    assert not _Payload.unpickled


class _Payload:
    "An object whose unpickling would be visible."
    unpickled = False
    def __reduce__(self): return (_mark_unpickled, ())


def _mark_unpickled():
    _Payload.unpickled = True
    return None
