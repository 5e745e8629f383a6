"""recommit: seconds to add the unchanged 10,000-file folder again and commit it (target <= 1 s), as
`neuronb data add DIR && neuronb data commit` would do in-process: the folder is listed, every file's hash comes
from the stat cache (no file is read), nothing is staged and the commit returns the current version.
Also times the same with one file changed (a new version is made) for comparison."""
import io, json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from _pngs import make_pngs  # noqa: E402


def main(n=10_000, repeats=5):
    from PIL import Image
    from neuronb.data.versions import add_files, commit
    work = Path(tempfile.mkdtemp(prefix='neuronb-bench-'))
    try:
        src, store, cache = work/'src', work/'store', work/'hashes.json'
        make_pngs(src, n)
        first = commit(store if add_files(store, src, cache=cache, progress=False) else store, message='first')
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            rep = add_files(store, src, cache=cache, progress=False)
            c = commit(store, message='again')
            times.append(time.perf_counter() - t0)
            assert rep.unchanged == n and not c['created'] and c['id'] == first['id'], (rep, c)
        Image.new('L', (28, 28), 3).save(src/'part000'/'img00000.png')
        t0 = time.perf_counter()
        rep = add_files(store, src, cache=cache, progress=False); c = commit(store, message='one changed')
        one = time.perf_counter() - t0
        assert rep.changed == ['part000/img00000.png'] and c['created'] and c['changed'] == 1, (rep, c)
        med = statistics.median(times)
        print(f"re-add + commit of {n} unchanged files: median {med:.3f}s, best {min(times):.3f}s over {repeats}; "
              f"with one file changed {one:.3f}s")
        print(json.dumps({'bench': 'recommit', 'value': round(med, 3), 'unit': 's', 'target_s': 1.0,
                          'best_s': round(min(times), 3), 'one_changed_s': round(one, 3), 'files': n}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
