"""Peak memory and time of head influence on features memmapped from disk.

For n training samples of d-dimensional features with k classes, written to
disk chunk by chunk (Gaussian class means through a ReLU, so the head fit is
a real fit), each measurement runs in a fresh child process that opens the
features as a read-only ``numpy.memmap`` and runs either

- ``head``: :func:`skitl.influence.fit_head` + :func:`head_influence` against
  a fixed validation memmap, or
- ``crossfit``: :func:`skitl.influence.cross_fit_head_influence` (``cv`` folds),
- ``selector``: the public path, ``InfluenceSampleSelector(random_state=0)
  .fit(F, y, X_val=Fv, y_val=yv)`` on the memmaps (validation, the default
  prior read off the features, scoring and the rule), or
- ``selector_crossfit``: ``InfluenceSampleSelector(cv=...).fit(F, y)``,

and reports its peak resident memory (``resource.getrusage``, ``ru_maxrss``:
anonymous memory *and* mapped file pages), the peak of its *anonymous*
memory (``RssAnon`` of ``/proc/self/status``, sampled every 20 ms: what
grows when an array is copied, not the file pages a memmap maps), wall time
and the number of passes over the training features by phase (the engine
counts them). A last part streams
an image ``Dataset`` of generated images through a small CNN with
``extract_features(out=<dir>)`` and runs head influence on the memmap it
returns, at two sizes.

Goals (from the issues): peak RSS at the largest n no more than 300 MB above
that at the smallest (memory flat in n); time per sample at the largest n
within 1.5x of that at the second largest (linear); for images, peak RSS
does not grow with n beyond the feature file; through the selector,
anonymous memory grows by at most 150 MB from 30,000 to 300,000 rows and
300 MB from 10,000 to 1,000,000.

Examples
--------
    python benchmarks/bench_memory.py                       # 10k, 100k, 1M
    python benchmarks/bench_memory.py --sizes 10000 100000 --image-sizes 2000 20000
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

# the shared harness lives next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "memory_cpu.txt"


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _anon_mb():
    """Resident anonymous memory now (MB), or NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class AnonPeak:
    """The peak of :func:`_anon_mb`, sampled by a thread while the block runs."""

    def __init__(self, every=0.02):
        import threading

        self.every, self.peak = every, _anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _anon_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_mb())


def write_features(path, n, d, k, seed, chunk=50_000):
    """Write (n, d) float32 features with class structure to a .npy file, chunk by chunk."""
    rng = np.random.default_rng(seed)
    means = (np.random.default_rng(12345).standard_normal((k, d)) * 0.15).astype(np.float32)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    offset = mm.offset
    del mm
    y = np.empty(n, dtype=np.int64)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            yc = rng.integers(0, k, m)
            F = means[yc] + rng.standard_normal((m, d), dtype=np.float32)
            np.maximum(F, 0, out=F)
            fh.write(F.tobytes())
            y[s:s + m] = yc
    np.save(str(path)[:-4] + "_y.npy", y)
    return y


class GeneratedImages(Dataset):
    """``n`` grey images of 16x16 pixels made on the fly from their index.

    Class ``c`` is a fixed random template plus pixel noise: nothing of size
    ``n`` is ever stored, so memory cannot grow with ``n`` through the data.
    """

    def __init__(self, n, k=10, seed=0, side=16):
        super().__init__()
        self.n, self.k, self.seed, self.side = n, k, seed, side
        rng = np.random.default_rng(999)
        self.templates = rng.random((k, 1, side, side)).astype(np.float32)

    def __len__(self):
        return self.n

    def label(self, i):
        return (i * 7 + self.seed) % self.k

    def __getitem__(self, i):
        import torch

        rng = np.random.default_rng((self.seed, i))
        c = self.label(i)
        x = self.templates[c] + 0.5 * rng.standard_normal((1, self.side, self.side),
                                                          dtype=np.float32)
        return torch.from_numpy(x), c


def child(args):
    import torch

    # one torch thread per measurement, denormals as skitl leaves them
    _harness.limit_threads(1, flush_denormal=None)
    from skitl.influence import (
        cross_fit_head_influence,
        extract_features,
        fit_head,
        head_influence,
    )

    out = {"n": args.n, "mode": args.mode}
    if args.mode == "images":
        from skitl.models import SmallCNN
        from skitl.utils import flush_denormal

        torch.manual_seed(0)
        net = SmallCNN(n_classes=10, width=16).eval()
        train = GeneratedImages(args.n, seed=0)
        val = GeneratedImages(2000, seed=1)
        y = np.array([train.label(i) for i in range(args.n)])
        yv = np.array([val.label(i) for i in range(len(val))])
        work = tempfile.mkdtemp(dir=args.dir)
        extract_features(net, GeneratedImages(64), layer="fc")  # warm-up
        out["baseline_mb"] = _peak_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        with flush_denormal():
            F = extract_features(net, train, layer="fc", batch_size=512, out=work)
            Fv = extract_features(net, val, layer="fc", batch_size=512, out=work)
        out["feature_seconds"] = time.perf_counter() - t0
        out["feature_file_mb"] = os.path.getsize(F.filename) / 2**20
        res = head_influence(F, y, Fv, yv, n_classes=10, alpha=1e-3)
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = time.process_time() - c0
        out["peak_mb"] = _peak_mb()
        out["solver"] = res.solver
        out["passes"] = res.info["passes"]
        del F, Fv
        shutil.rmtree(work)
    else:
        F = np.load(args.features, mmap_mode="r")
        y = np.load(args.features[:-4] + "_y.npy")
        # warm-up: imports, lazy torch / BLAS initialisation on a tiny slice
        small = np.asarray(F[:500])
        fit_head(small, y[:500], args.k, alpha=1e-3)
        out["baseline_mb"] = _peak_mb()
        out["anon_baseline_mb"] = _anon_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        anon = AnonPeak().__enter__()
        if args.mode in ("selector", "selector_crossfit"):
            import warnings

            from skitl import InfluenceSampleSelector

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if args.mode == "selector":
                    Fv = np.load(args.val, mmap_mode="r")
                    yv = np.load(args.val[:-4] + "_y.npy")
                    sel = InfluenceSampleSelector(random_state=0).fit(F, y, X_val=Fv,
                                                                      y_val=yv)
                else:
                    sel = InfluenceSampleSelector(cv=args.cv, random_state=0).fit(F, y)
            res = sel
            info = sel.influence_
            out.update(solver=info["solver"], residual=info["residual"],
                       phases={k: round(v, 2) for k, v in info["seconds"].items()},
                       passes={})
            res.scores = sel.scores_
        elif args.mode == "head":
            Fv = np.load(args.val, mmap_mode="r")
            yv = np.load(args.val[:-4] + "_y.npy")
            res = head_influence(F, y, Fv, yv, n_classes=args.k, alpha=1e-3,
                                 solver=args.solver)
            out.update(solver=res.solver, residual=res.residual,
                       phases={k: round(v, 2) for k, v in res.seconds.items()},
                       passes=res.info["passes"])
        else:
            res = cross_fit_head_influence(F, y, n_classes=args.k, cv=args.cv, alpha=1e-3,
                                           solver=args.cv_solver, random_state=0)
            out.update(solver=res.solver, residual=max(res.residual),
                       phases={k: round(v, 2) for k, v in res.seconds.items()},
                       passes=res.passes)
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = time.process_time() - c0
        anon.__exit__()
        out["anon_peak_mb"] = anon.peak
        out["peak_mb"] = _peak_mb()
        out["finite"] = bool(np.isfinite(res.scores).all())
    print("RESULT " + json.dumps(out), flush=True)


def run_child(argv):
    proc = subprocess.run([sys.executable, str(HERE), "--child", *argv],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def build_parser():
    ap = _harness.make_parser(__doc__, full_doc=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-val", type=int, default=5000)
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--solver", default="auto", help="solver of the head (no cross-fit)")
    ap.add_argument("--cv-solver", default="auto",
                    help="solver of each cross-fitted fold ('auto': chosen by cost, "
                         "CG at these sizes; no dense factor, since the exact "
                         "self-influence is not asked for)")
    ap.add_argument("--image-sizes", type=int, nargs="*", default=[20_000, 200_000])
    ap.add_argument("--modes", nargs="+", default=["head", "crossfit"])
    ap.add_argument("--dir", default=None, help="where the feature files go (temporary)")
    _harness.add_arguments(ap, "out", out=dict(
        default=str(RESULTS), aliases=("--output",),
        help="result file, rewritten after every line ('' for none)"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    ap.add_argument("--val", help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    work = tempfile.mkdtemp(prefix="skitl-bench-memory-", dir=args.dir)
    need = sum(args.sizes) * args.d * 4 / 2**30
    free = shutil.disk_usage(work).free / 2**30
    # written as it goes: the largest runs take long on a shared machine
    say = _harness.Log(args.out or None, live=True)
    for line in _harness.header_lines(_harness.run_info(__file__, argv, threads=1)):
        say(line)
    say("each measurement in a fresh child process with one torch thread")
    say(f"d={args.d}, k={args.k}, validation n={args.n_val} (no cross-fit), cv={args.cv} "
        f"(cross-fit, solver={args.cv_solver}), float32 features memmapped from "
        f"{work} ({free:.0f} GiB free, feature files {need:.2f} GiB)")
    if need * 1.2 > free:
        raise SystemExit("not enough free disk space for the feature files")
    rows = []
    try:
        val = os.path.join(work, "val.npy")
        write_features(val, args.n_val, args.d, args.k, seed=1)
        paths = {}
        for n in args.sizes:
            paths[n] = os.path.join(work, f"train_{n}.npy")
            t = time.perf_counter()
            write_features(paths[n], n, args.d, args.k, seed=0)
            say(f"feature file n={n} written in {time.perf_counter() - t:.1f} s")
        say("")
        say(f"{'n':>9}  {'mode':>17}  {'peak RSS MB':>11}  {'above import':>12}  "
            f"{'anon peak':>9}  {'anon above':>10}  "
            f"{'seconds':>8}  {'CPU s':>8}  {'us/sample':>9}  {'passes':>6}  solver / phases (s) / "
            "passes by phase")
        for mode in args.modes:
            for n in args.sizes:
                r = run_child(["--n", str(n), "--mode", mode, "--features", paths[n],
                               "--val", val, "--k", str(args.k), "--cv", str(args.cv),
                               "--solver", args.solver, "--cv-solver", args.cv_solver])
                r["us"] = r["seconds"] / n * 1e6
                rows.append(r)
                say(f"{n:>9}  {mode:>17}  "
                    f"{r['peak_mb']:>11.0f}  {r['peak_mb'] - r['baseline_mb']:>12.0f}  "
                    f"{r['anon_peak_mb']:>9.0f}  "
                    f"{r['anon_peak_mb'] - r['anon_baseline_mb']:>10.0f}  "
                    f"{r['seconds']:>8.1f}  {r['cpu_seconds']:>8.1f}  {r['us']:>9.1f}  "
                    f"{sum(r['passes'].values()):>6}  {r['solver']} {r['phases']} "
                    f"{r['passes']}" + ("" if r["finite"] else "  NON-FINITE SCORES"))
            rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
            if len(rs) >= 2:
                lo, mid, hi = rs[0], rs[-2], rs[-1]
                growth = hi["peak_mb"] - lo["peak_mb"]
                ratio = hi["us"] / mid["us"]
                say(f"goal [{mode}] peak RSS at n={hi['n']} minus at n={lo['n']}: "
                    f"{growth:.0f} MB (<= 300 MB: {'MET' if growth <= 300 else 'NOT MET'})")
                say(f"goal [{mode}] time per sample at n={hi['n']} / at n={mid['n']}: "
                    f"{ratio:.2f}x (<= 1.5x: {'MET' if ratio <= 1.5 else 'NOT MET'})")
                if mode.startswith("selector"):
                    anon = hi["anon_peak_mb"] - lo["anon_peak_mb"]
                    limit = 150 if hi["n"] <= 300_000 else 300
                    say(f"goal [{mode}] anonymous memory peak at n={hi['n']} minus at "
                        f"n={lo['n']}: {anon:.0f} MB (<= {limit} MB: "
                        f"{'MET' if anon <= limit else 'NOT MET'})")
            if mode == args.modes[0] and args.image_sizes:
                images(args, say)
        if args.image_sizes and not args.modes:
            images(args, say)
        say(f"load average at end: {_harness.load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def images(args, say):
    say("")
    say("images: generated 16x16 images -> SmallCNN(width=16) -> "
        "extract_features(out=dir) -> head_influence on the memmap (2,000 val images)")
    say(f"{'n':>9}  {'peak RSS MB':>11}  {'above import':>12}  {'file MB':>8}  "
        f"{'features s':>10}  {'total s':>8}  {'CPU s':>8}  passes")
    img = []
    for n in args.image_sizes:
        r = run_child(["--n", str(n), "--mode", "images"] +
                      (["--dir", args.dir] if args.dir else []))
        img.append(r)
        say(f"{n:>9}  {r['peak_mb']:>11.0f}  {r['peak_mb'] - r['baseline_mb']:>12.0f}  "
            f"{r['feature_file_mb']:>8.1f}  {r['feature_seconds']:>10.1f}  "
            f"{r['seconds']:>8.1f}  {r['cpu_seconds']:>8.1f}  {r['passes']}")
    if len(img) >= 2:
        lo, hi = img[0], img[-1]
        growth = hi["peak_mb"] - lo["peak_mb"]
        files = hi["feature_file_mb"] - lo["feature_file_mb"]
        ok = growth <= files + 50
        say(f"goal [images] peak RSS growth {growth:.0f} MB from n={lo['n']} to "
            f"n={hi['n']}, feature file growth {files:.0f} MB (growth <= file growth "
            f"+ 50 MB of allocator noise: {'MET' if ok else 'NOT MET'})")
    say("")


if __name__ == "__main__":
    main()
