"""ingest: files per second adding 10,000 small PNG files from a local folder into a new local store (listed,
hashed, every image decoded to check it, stored by content, staged) and committing them, against plain `cp -r` of
the same folder in the same run (ratio = our files/s ÷ cp's files/s)."""
import io, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from _pngs import make_pngs  # noqa: E402


def cp_r(src, dest):
    t0 = time.perf_counter()
    subprocess.run(['cp', '-r', str(src), str(dest)], check=True)
    return time.perf_counter() - t0


def main(n=10_000, repeats=3):
    from neuronb.data.versions import add_files, commit
    work = Path(tempfile.mkdtemp(prefix='neuronb-bench-'))
    try:
        src = work/'src'; nbytes = make_pngs(src, n)
        cp_times, ours, adds = [], [], []
        for i in range(repeats):
            cp_times.append(cp_r(src, work/f"copy{i}"))
            t0 = time.perf_counter()
            rep = add_files(work/f"store{i}", src, cache=work/f"hashes{i}.json", progress=False)
            t1 = time.perf_counter()
            c = commit(work/f"store{i}", message='ingest')
            ours.append(time.perf_counter() - t0); adds.append(t1 - t0)
            assert len(rep.added) == n and not rep.rejected and c['n'] == n, rep
            shutil.rmtree(work/f"copy{i}"); shutil.rmtree(work/f"store{i}")
        best, cp_best = min(ours), min(cp_times)
        print(f"{n} files ({nbytes / 1e6:.1f} MB): add+commit best {best:.2f}s ({n / best:.0f} files/s; add alone "
              f"{min(adds):.2f}s), cp -r best {cp_best:.2f}s ({n / cp_best:.0f} files/s) over {repeats} runs")
        print(json.dumps({'bench': 'ingest', 'value': round(n / best), 'unit': 'files/s', 'seconds': round(best, 3),
                          'add_seconds': round(min(adds), 3), 'cp_r_files_per_s': round(n / cp_best),
                          'cp_r_seconds': round(cp_best, 3), 'ratio_to_cp_r': round(cp_best / best, 3),
                          'files': n, 'mb': round(nbytes / 1e6, 1), 'validated': True, 'cpus': os.cpu_count()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
