"""Ingest benchmark: minion returns indexed per second, halite vs Salt's local_cache.

Both caches are loaded through Salt's loader and driven the way a master drives them: for
each job ``prep_jid`` + ``save_load`` (the publish), then one ``salt.utils.job.store_job``
call per minion return (Salt's own code path, which calls ``prep_jid``, ``save_load`` and
``returner`` of the configured cache). The return calls are timed for the headline figure,
together with the final commit of halite's write-behind queue: a return counts once it is
in the database. halite writes to a SQLite file. After the run, both caches are read back to check
that every return was stored: a benchmark that loses data measures nothing.

Usage: python bench/ingest.py [--jobs 2000] [--minions 5]
"""

import argparse
import copy
import os
import shutil
import tempfile
import time
import types
from pathlib import Path

import salt.config
import salt.loader
import salt.utils.job

from halite_core.jobcache import flush_all

STATE_RETURN = {
    f"file_|-conf{i}_|-/etc/app/conf{i}_|-managed": {
        "result": i != 2,
        "comment": "File /etc/app/conf%d is in the correct state" % i,
        "changes": {"diff": "+line"} if i == 1 else {},
        "duration": 3.5 + i,
        "__run_num__": i,
        "__sls__": "app",
        "__id__": f"conf{i}",
        "name": f"/etc/app/conf{i}",
        "start_time": "12:00:00.000000",
    }
    for i in range(8)
}


def make_master(root: Path, cache: str) -> types.SimpleNamespace:
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(
        root_dir=str(root),
        cachedir=str(root / "cache"),
        pki_dir=str(root / "pki"),
        sock_dir=str(root / "sock"),
        extension_modules=str(root / "extmods"),
        master_job_cache=cache,
        id="bench_master",
    )
    (root / "pki" / "minions").mkdir(parents=True)
    returners = salt.loader.returners(opts, {})
    return types.SimpleNamespace(
        opts=opts, cache=cache, returners=returners, mminion=types.SimpleNamespace(returners=returners)
    )


def workload(jobs: int, minions: int):
    base = 20261128000000000000
    names = [f"minion{m:05d}" for m in range(minions)]
    for n in range(jobs):
        jid = str(base + n * 1000)
        state = n % 5 == 0
        fun = "state.apply" if state else "test.ping"
        load = {"jid": jid, "fun": fun, "arg": ["app"] if state else [], "tgt": "*",
                "tgt_type": "glob", "user": "root", "ret": "", "kwargs": {}}
        returns = [
            {"cmd": "_return", "id": name, "jid": jid, "fun": fun,
             "fun_args": load["arg"], "return": STATE_RETURN if state else True,
             "retcode": 2 if state else 0, "success": not state,
             **({"out": "highstate"} if state else {})}
            for name in names
        ]
        yield jid, load, names, returns


def run(master, jobs: int, minions: int) -> dict:
    prep = master.returners[f"{master.cache}.prep_jid"]
    save_load = master.returners[f"{master.cache}.save_load"]
    publish_s = returns_s = 0.0
    count = 0
    for jid, load, names, returns in workload(jobs, minions):
        t0 = time.perf_counter()
        prep(nocache=False, passed_jid=jid)
        save_load(jid, load, names)
        t1 = time.perf_counter()
        for ret in returns:
            salt.utils.job.store_job(master.opts, ret, mminion=master.mminion)
        returns_s += time.perf_counter() - t1
        publish_s += t1 - t0
        count += len(returns)
    # Indexed means committed: halite's last batch is part of the measured time.
    t0 = time.perf_counter()
    flushed = flush_all()
    returns_s += time.perf_counter() - t0
    return {"returns": count, "returns_s": returns_s, "publish_s": publish_s, "flushed": flushed}


def verify(master, jobs: int, minions: int) -> None:
    get_jid = master.returners[f"{master.cache}.get_jid"]
    stored = len(master.returners[f"{master.cache}.get_jids"]())
    assert stored == jobs, f"{master.cache}: {stored} jobs stored of {jobs}"
    for jid, _, names, _ in workload(jobs, minions):
        got = get_jid(jid)
        assert sorted(got) == names, f"{master.cache}: returns of {jid} incomplete"


def read_timings(master) -> dict:
    def timed(fn, *args, repeat=5):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(*args)
            best = min(best, time.perf_counter() - t0)
        return best

    r = master.returners
    c = master.cache
    some_jid = next(iter(workload(1, 1)))[0]
    return {
        "get_jids_filter(50)": timed(r[f"{c}.get_jids_filter"], 50),
        "get_jid": timed(r[f"{c}.get_jid"], some_jid),
        "get_jids (all)": timed(r[f"{c}.get_jids"], repeat=2),
    }


def disk_usage(path: Path) -> tuple[int, int]:
    size = files = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return size, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--minions", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="halite-bench-"))
    results = {}
    try:
        for cache in ("local_cache", "halite"):
            master = make_master(workdir / cache, cache)
            results[cache] = run(master, args.jobs, args.minions)
            verify(master, args.jobs, args.minions)
            results[cache]["reads"] = read_timings(master)
            results[cache]["disk"] = disk_usage(workdir / cache / "cache")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"ingest: {args.jobs} jobs x {args.minions} returns, one store_job call per return")
    print(f"{'cache':<12} {'returns/s':>10} {'publishes/s':>12} {'disk MB':>8} {'files':>7}")
    for cache, res in results.items():
        rate = res["returns"] / res["returns_s"]
        pubs = args.jobs / res["publish_s"]
        size, files = res["disk"]
        print(f"{cache:<12} {rate:>10.0f} {pubs:>12.0f} {size / 1e6:>8.1f} {files:>7}")
    ours, theirs = results["halite"], results["local_cache"]
    ratio = (ours["returns"] / ours["returns_s"]) / (theirs["returns"] / theirs["returns_s"])
    print(f"RATIO returns/s halite / local_cache: {ratio:.1f}x (target >= 10x)")
    print("reads (best of runs, ms):")
    for name in ours["reads"]:
        a, b = ours["reads"][name] * 1000, theirs["reads"][name] * 1000
        print(f"  {name:<20} halite {a:8.2f}  local_cache {b:8.2f}  ratio {b / a:6.1f}x")


if __name__ == "__main__":
    main()
