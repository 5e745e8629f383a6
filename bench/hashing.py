"""hashing: the store's hashing throughput over 10,000 small PNG files, as a ratio to `sha256sum` over the same
files in the same run (target >= 0.7). Also prints the ratio on a few large files.

The store's figure is `neuronb.data.versions.hash_files` (list the folder, read and SHA-256 every file on a thread
pool, no stat cache); the baseline is `find DIR -type f -print0 | xargs -0 sha256sum`. Both run on a warm page cache.
"""
import io, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from _pngs import make_pngs  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def sha256sum(folder):
    out = subprocess.run(f"find {folder} -type f -print0 | xargs -0 sha256sum", shell=True, capture_output=True, text=True)
    if out.returncode: raise SystemExit(out.stderr)
    return {Path(line[66:]).relative_to(folder).as_posix(): line[:64] for line in out.stdout.splitlines()}


def main(repeats=5):
    from neuronb.data.versions import hash_files
    if not shutil.which('sha256sum'): raise SystemExit('sha256sum is not installed: no baseline')
    work = Path(tempfile.mkdtemp(prefix='neuronb-bench-'))
    try:
        small, big = work/'small', work/'big'
        nbytes = make_pngs(small)
        big.mkdir()
        for i in range(4): (big/f"blob{i}.bin").write_bytes(os.urandom(64 << 20))
        ours = hash_files(small); theirs = sha256sum(small)
        assert ours == theirs, 'hashes differ from sha256sum'
        res = {}
        for name, folder in (('small', small), ('large', big)):
            s_best, s_med = best_of(lambda: hash_files(folder), repeats)
            b_best, b_med = best_of(lambda: sha256sum(folder), repeats)
            res[name] = dict(store_s=round(s_best, 3), sha256sum_s=round(b_best, 3), ratio=round(b_best / s_best, 3),
                             store_median_s=round(s_med, 3), sha256sum_median_s=round(b_med, 3))
            print(f"{name}: store {s_best:.3f}s, sha256sum {b_best:.3f}s (best of {repeats}) -> ratio {b_best / s_best:.2f}")
        n = len(ours)
        print(json.dumps({'bench': 'hashing', 'value': res['small']['ratio'], 'unit': 'x sha256sum throughput',
                          'target': 0.7, 'files': n, 'mb': round(nbytes / 1e6, 1),
                          'store_files_per_s': round(n / res['small']['store_s']), 'sha256sum_files_per_s': round(n / res['small']['sha256sum_s']),
                          'large_files_ratio': res['large']['ratio'], 'large_mb': 4 * 64, 'cpus': os.cpu_count(),
                          'detail': res}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
