"""The long fuzz run: N mutated inputs across the four formats, under a memory cap.

Run by hand: ``python benchmarks/fuzz.py --count 20000``. Each worker process caps its address
space (--memory-gb) and each input's time (--seconds), so a large allocation (MemoryError) or a
hang counts as a failure, like any exception other than the tool's own. Failing inputs are saved
to --failures for replay. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import signal
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzzing import mutate, outcome, seed_files  # noqa: E402


def _timeout(signum, frame):
    raise TimeoutError("input took too long (hang?)")


def worker(args: tuple[int, int, int, int, str]) -> dict:
    count, seed, memory_gb, seconds, failures = args
    resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))
    signal.signal(signal.SIGALRM, _timeout)
    rng = random.Random(seed)
    counts = {"ok": 0, "refused": 0, "failed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        seeds = seed_files(Path(tmp))
        work = Path(tmp, "work")
        work.mkdir()
        names = sorted(seeds)
        for i in range(count):
            name = names[i % len(names)]
            data = mutate(seeds[name], rng, name)
            signal.alarm(seconds)
            try:
                counts[outcome(data, name, work)] += 1
            except BaseException as e:  # noqa: BLE001 - anything else is the finding
                counts["failed"] += 1
                saved = Path(failures, f"{seed}-{i}-{name}")
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_bytes(data)
                print(f"FAILED {saved}: {type(e).__name__}: {e}\n"
                      f"{''.join(traceback.format_tb(e.__traceback__)[-2:])}", flush=True)
                for leftover in work.iterdir():
                    leftover.unlink()
            finally:
                signal.alarm(0)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-gb", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--failures", default="fuzz-failures")
    opts = parser.parse_args()
    share = -(-opts.count // opts.workers)
    jobs = [(share, opts.seed * 1000 + w, opts.memory_gb, opts.seconds, opts.failures)
            for w in range(opts.workers)]
    # Not multiprocessing.Pool: its workers are daemons, and the HDF5 reader starts a child.
    with ProcessPoolExecutor(opts.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(worker, jobs))
    total = {k: sum(r[k] for r in results) for k in results[0]}
    print(f"{sum(total.values())} mutated inputs (7 seed files: 2 .npz, .h5, .safetensors, "
          f"3 .mpz): {total['ok']} decoded, {total['refused']} refused with a one-line error, "
          f"{total['failed']} failed")
    sys.exit(1 if total["failed"] else 0)


if __name__ == "__main__":
    main()
