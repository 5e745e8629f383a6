"""Shared by the serving benchmarks: a project whose champion has the digits example's shape, servers started as
subprocesses on loopback, and a light asyncio HTTP/1.1 client (pre-built request bytes, keep-alive connections), so
the client's own cost stays small beside the servers'."""
import asyncio, json, os, re, signal, socket, subprocess, sys, time
from pathlib import Path

ENV = {**os.environ, 'WANDB_MODE': 'disabled'}
MAIN = 'import sys; from neuronb.cli import main; sys.exit(main())'

# A hand-written FastAPI endpoint: one preprocess and one forward per request, in FastAPI's thread pool.
BASELINE = '''
import sys, uvicorn
from fastapi import FastAPI, UploadFile
from neuronb.train.model import load_model, predict_proba, preprocess
model, cfg = load_model(sys.argv[1])
app = FastAPI()
@app.post('/predict')
def predict(file: UploadFile):
    p = predict_proba(model, cfg, preprocess(file.file.read(), cfg))[0]
    i = int(p.argmax())
    return {'label': cfg['classes'][i], 'probability': float(p[i])}
uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning', access_log=False)
'''

# The same model behind LitServe (measured when litserve is installed: `--litserve PYTHON`): its batching
# (max_batch_size 32, batch_timeout 5 ms, as neuronb's defaults), one inference worker, one API server process.
LITSERVE = '''
import sys, torch, litserve as ls
from fastapi import Request
from neuronb.train.model import load_model, predict_proba, preprocess
class DigitAPI(ls.LitAPI):
    def setup(self, device): self.model, self.cfg = load_model(sys.argv[1])
    def decode_request(self, request: Request): return preprocess(request['file'].file.read(), self.cfg)
    def batch(self, xs): return torch.cat(xs)
    def predict(self, x): return predict_proba(self.model, self.cfg, x)
    def unbatch(self, out): return list(out)
    def encode_response(self, p):
        i = int(p.argmax()); return {'label': self.cfg['classes'][i], 'probability': float(p[i])}
if __name__ == '__main__':
    server = ls.LitServer(DigitAPI(max_batch_size=32, batch_timeout=0.005), accelerator='cpu', workers_per_device=1)
    server.run(host='127.0.0.1', port=int(sys.argv[2]), generate_client_file=False, log_level='warning', num_api_servers=1)
'''


def make_project(folder, width=32, size=32):
    "A project (`init_project`) whose champion is an untrained simple_cnn shaped as the digits example trains it; returns (root, model folder, a digit PNG)."
    import torch
    from neuronb.pipeline.init import init_project
    from neuronb.data.digits import render_digits
    from neuronb.train.model import build_model, save_model
    from neuronb.train.registry import register_model, move_alias
    root = Path(folder)/'digits'
    store = init_project(root).store()
    torch.manual_seed(0)
    cfg = {'arch': 'simple_cnn', 'n_classes': 10, 'in_channels': 1, 'width': width, 'size': size, 'mean': 0.2, 'std': 0.3,
           'frame_ink': True, 'classes': [str(i) for i in range(10)], 'test_accuracy': 0.9}
    v = register_model(store, save_model(build_model(cfg), cfg, Path(folder)/'model') and Path(folder)/'model')['version']
    move_alias(store, 'champion', v, 'benchmark')
    render_digits(Path(folder)/'png', n=1, size=size)
    return root, Path(store.path('models', v)), next((Path(folder)/'png').glob('*.png')).read_bytes()


def existing_project(root, folder):
    "`(root, champion's model folder, a digit PNG)` of a project that has a champion (e.g. the digits example after `neuronb run`)."
    from neuronb.pipeline.project import load_project
    from neuronb.data.digits import render_digits
    from neuronb.train.registry import fetch_model
    size = json.loads((fetch_model(load_project(root).store(), '@champion')/'config.json').read_text())['size']
    render_digits(Path(folder)/'png', n=1, size=size)
    return Path(root), fetch_model(load_project(root).store(), '@champion'), next((Path(folder)/'png').glob('*.png')).read_bytes()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start(cmd, port, ready='/ready', deadline=120):
    "Start a server process and wait (with a deadline) until GET `ready` answers 200."
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)   # a group: stop() ends all of it
    end = time.monotonic() + deadline
    while True:
        if proc.poll() is not None: raise RuntimeError(f"server exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=2) as s:
                s.sendall(f'GET {ready} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'.encode())
                if s.recv(64).startswith(b'HTTP/1.1 200'): return proc
        except OSError: pass
        if time.monotonic() > end: proc.kill(); raise RuntimeError(f"server on {port} never answered {ready}")
        time.sleep(0.05)


def mean_batch(port):
    "Images per forward so far, from neuronb serve's /metrics (None for a server without them)."
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        text = b''.join(iter(lambda: s.recv(65536), b'')).decode('utf-8', 'replace')
    got = dict(re.findall(r'^neuronb_serve_batch_images_(sum|count) (\S+)$', text, re.M))
    return float(got['sum']) / float(got['count']) if got.get('count') and float(got['count']) else None


def stop(proc):
    "SIGTERM to the server, then to whatever of its process group is left (LitServe's worker processes outlive their parent)."
    proc.send_signal(signal.SIGTERM)
    try: proc.wait(60)
    except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try: os.killpg(proc.pid, sig)
        except ProcessLookupError: return
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try: os.killpg(proc.pid, 0)
            except ProcessLookupError: return
            time.sleep(0.05)


def neuronb_server(root, port, *args):
    return start([sys.executable, '-c', MAIN, 'serve', str(root), '--port', str(port), *args], port)


def baseline_server(model_folder, port):
    return start([sys.executable, '-c', BASELINE, str(model_folder), str(port)], port, ready='/docs')


def litserve_server(python, model_folder, port, folder):
    script = Path(folder)/'litserve_digits.py'; script.write_text(LITSERVE)   # a file: LitServe spawns processes
    return start([python, str(script), str(model_folder), str(port)], port, ready='/health')


def upload_request(port, png, path='/predict') -> bytes:
    "The bytes of one multipart POST of `png`, as curl -F file=@digit.png sends it."
    b = 'neuronbbench0123456789'
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\nContent-Type: image/png\r\n\r\n'
            .encode() + png + f'\r\n--{b}--\r\n'.encode())
    return (f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary={b}\r\n'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body

_LENGTH = re.compile(rb'content-length:\s*(\d+)', re.I)


async def _exchange(reader, writer, request):
    writer.write(request); await writer.drain()
    head = await reader.readuntil(b'\r\n\r\n')
    body = await reader.readexactly(int(_LENGTH.search(head).group(1)))
    return int(head.split(b' ', 2)[1]), body


async def _load(port, request, clients, seconds, warmup):
    "`(answers with 200, other answers, latencies in s)` of `clients` keep-alive connections sending `request` in a loop."
    ok, bad, lat = [0], [0], []
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    async def client():
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        try:
            while (t := time.perf_counter()) < t_end:
                status, _ = await _exchange(reader, writer, request)
                if t >= t_measure:
                    lat.append(time.perf_counter() - t)
                    if status == 200: ok[0] += 1
                    else: bad[0] += 1
        finally: writer.close()
    await asyncio.gather(*[client() for _ in range(clients)])
    return ok[0], bad[0], lat


def load(port, request, clients=32, seconds=8.0, warmup=2.0):
    return asyncio.run(_load(port, request, clients, seconds, warmup))


def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]
