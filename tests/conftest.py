"""Fixtures shared by the storage tests: a real S3-protocol server (moto's standalone server) on 127.0.0.1, and a real
PostgreSQL server of the tests' own on a Unix socket."""
import logging, os
import pytest


@pytest.fixture(scope='module')
def s3_endpoint():
    "The URL of a moto S3 server on a free loopback port, stopped when the module's tests are done."
    pytest.importorskip('moto.server'); pytest.importorskip('s3fs')
    from moto.server import ThreadedMotoServer
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try: yield f"http://127.0.0.1:{server._server.server_port}"
    finally: server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    "Test credentials and nothing else from the machine's AWS configuration."
    for k in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing'); monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'us-east-1'); monkeypatch.setenv('AWS_EC2_METADATA_DISABLED', 'true')
    monkeypatch.setenv('AWS_CONFIG_FILE', str(tmp_path/'none')); monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(tmp_path/'none'))
    return monkeypatch


def _postgres_bin():
    "The folder of the newest Debian PostgreSQL server binaries, or None."
    import glob
    found = sorted(glob.glob('/usr/lib/postgresql/[0-9]*/bin/pg_ctl'), key=lambda p: int(p.split('/')[-3]))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope='session')
def postgres_server():
    """The socket folder of a PostgreSQL server of the tests' own: a fresh cluster in a temporary folder, reached only
    through a Unix socket there (no TCP port), stopped and removed after the session. Skipped when PostgreSQL is not
    installed (`make postgres` installs it), except in CI, where that is a failure."""
    import pwd, shutil, subprocess, tempfile
    bin_dir, missing = _postgres_bin(), None
    if bin_dir is None: missing = 'PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl); run `make postgres`'
    else:
        try: import psycopg  # noqa: F401
        except ImportError: missing = "the psycopg driver is not installed; `pip install 'psycopg[binary]'` (or `make install`)"
    if missing:
        if os.environ.get('CI'): pytest.fail(f'{missing}: CI must run the PostgreSQL tests')
        pytest.skip(missing)
    as_user = []
    if os.getuid() == 0:  # the server refuses to run as root: run it as the postgres user Debian's package creates
        try: pw = pwd.getpwnam('postgres')
        except KeyError: pytest.fail("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        as_user = ['runuser', '-u', 'postgres', '--']
    top = tempfile.mkdtemp(prefix='neuronb-pg-')  # short: a Unix socket path must stay under 108 bytes
    if as_user: os.chown(top, pw.pw_uid, pw.pw_gid)
    data, log = os.path.join(top, 'data'), os.path.join(top, 'server.log')
    def pg(*args): return subprocess.run(as_user + [os.path.join(bin_dir, args[0]), *args[1:]], capture_output=True, text=True)
    def check(res, what):
        if res.returncode: pytest.fail(f"{what} failed:\n{res.stdout}{res.stderr}" + (open(log).read() if os.path.exists(log) else ''))
    try:
        check(pg('initdb', '-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'), 'initdb')
        # -w: pg_ctl returns once the server accepts connections (or fails after -t seconds)
        check(pg('pg_ctl', '-D', data, '-l', log, '-w', '-t', '60', '-o', f"-k {top} -c listen_addresses='' -F", 'start'), 'pg_ctl start')
        yield top
    finally:
        if os.path.exists(os.path.join(data, 'postmaster.pid')): pg('pg_ctl', '-D', data, '-m', 'fast', '-w', 'stop')
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    "A SQLAlchemy URL (`postgresql+psycopg`) to a new, empty database on the tests' PostgreSQL server."
    import uuid, psycopg
    name = f'test_{uuid.uuid4().hex[:12]}'
    with psycopg.connect(host=postgres_server, user='postgres', dbname='postgres', autocommit=True) as con:
        con.execute(f'CREATE DATABASE {name}')
    return f'postgresql+psycopg://postgres@/{name}?host={postgres_server}'


def stop_server(proc, sig=None, timeout=60):
    "Signal a server we started (SIGTERM by default) and wait until it and every process it started are gone; the ones left."
    import signal, psutil
    try: family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess: family = []
    if proc.poll() is None: proc.send_signal(sig or signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    left = []
    for p in alive:   # never leave them to the next test: name them, then end them
        try: left.append(' '.join(p.cmdline()[:4])); p.kill()
        except psutil.NoSuchProcess: pass
    proc.wait(10)
    return left


def free_port():
    "A port nothing listens on now, on 127.0.0.1."
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def until(check, what, timeout=60):
    "Wait until `check()` is true (returning it), failing with `what` after `timeout` seconds."
    import time
    end = time.monotonic() + timeout
    while not (ok := check()):
        assert time.monotonic() < end, f'gave up waiting for {what}'
        time.sleep(0.1)
    return ok


class DemoServer:
    "`neuronb demo` (or any command printing its links the same way) in a subprocess: its private links, its kernels."
    def __init__(self, cmd, env, ready='Ctrl-C stops the demo', preheated=False, timeout=180):
        import re, subprocess, threading, time
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out, self.links = [], {}
        end = time.monotonic() + timeout
        want = 'Preheated:' if preheated else ready
        while not any(want in l for l in self.out):
            line = self.proc.stdout.readline()
            assert line and time.monotonic() < end, f'the server stopped before saying {want!r}:\n' + ''.join(self.out)
            self.out.append(line)
            if m := re.match(r'\s+(\S+)\s+(http://\S+)', line): self.links[m.group(1)] = m.group(2)
        threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True).start()   # its log must never fill the pipe
        link = next(iter(self.links.values()))
        self.port, self.token = int(re.search(r':(\d+)/', link).group(1)), link.split('token=')[1]

    def link(self, who=None): return self.links[who] if who else next(iter(self.links.values()))

    def get(self, path='/', method='GET', headers=None, body=None, token=True):
        "`(status, headers, body)` of one request, signed in with the first link's token (as its cookie) unless `token=False`."
        import http.client
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=120)
        h = dict(headers or {})
        if token: h['Cookie'] = f'neuronb_demo_{self.port}={self.token if token is True else token}'
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        out = r.status, r.headers, r.read().decode('utf-8', 'replace')
        conn.close()
        return out

    def kernels(self) -> list:
        "The kernel processes Voila is running now."
        import psutil
        try: return [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                     if 'ipykernel_launcher' in ' '.join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess: return []

    def kernel_alive(self, kid) -> bool:
        "Whether kernel `kid` still runs (its connection file is on its command line)."
        import psutil
        def alive(p):
            try: return f'kernel-{kid}.json' in ' '.join(p.cmdline())
            except psutil.Error: return False
        return any(alive(p) for p in self.kernels())

    def stop(self, sig=None) -> list:
        return stop_server(self.proc, sig)
