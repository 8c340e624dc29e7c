"""Ingest benchmark: minion returns indexed per second, halite vs Salt's local_cache.

Both caches are loaded through Salt's loader and driven the way a master drives them, one
call per return: for each job ``prep_jid`` + ``save_load`` (the publish), then per minion
return either the cache's ``returner`` (figure 1, the cost of the cache itself, as the
issue's baseline was measured) or Salt's own ``salt.utils.job.store_job`` (figure 2, which
adds Salt's per-return work, the same for both caches). halite runs two ways:

- ``halite+engine``: the master's config lists the halite engine, and the engine's
  committer runs in a process of its own, as the engine's process does on a master; this
  process (Salt's worker) only journals;
- ``halite``: no engine; the returner's own committer thread commits, in this process.

The clock runs from the first call to the commit of halite's last batch: a return counts
once it is in the database. halite writes to a SQLite file. After each run the cache is
read back to check that every return was stored: a benchmark that loses data measures
nothing. Figure 4 is the cost of one returner call in Salt's worker (p50, p99).

Usage: python bench/ingest.py [--jobs 2000] [--minions 5] [--rounds 3]
"""

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
import types
from pathlib import Path

import salt.config
import salt.loader
import salt.utils.job
from committer import EngineCommitter

from halite_core.jobcache import flush_all

STATE_RETURN = {
    f"file_|-conf{i}_|-/etc/app/conf{i}_|-managed": {
        "result": i != 2,
        "comment": f"File /etc/app/conf{i} is in the correct state",
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


def make_master(root: Path, cache: str, engine: bool = False) -> types.SimpleNamespace:
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
    if engine:
        opts["engines"] = [{"halite": {}}]
    (root / "pki" / "minions").mkdir(parents=True)
    returners = salt.loader.returners(opts, {})
    return types.SimpleNamespace(
        opts=opts,
        cache=cache,
        returners=returners,
        mminion=types.SimpleNamespace(returners=returners),
    )


def workload(jobs: int, minions: int):
    base = 20261128000000000000
    names = [f"minion{m:05d}" for m in range(minions)]
    for n in range(jobs):
        jid = str(base + n * 1000)
        state = n % 5 == 0
        fun = "state.apply" if state else "test.ping"
        load = {
            "jid": jid,
            "fun": fun,
            "arg": ["app"] if state else [],
            "tgt": "*",
            "tgt_type": "glob",
            "user": "root",
            "ret": "",
            "kwargs": {},
        }
        returns = [
            {
                "cmd": "_return",
                "id": name,
                "jid": jid,
                "fun": fun,
                "fun_args": load["arg"],
                "return": STATE_RETURN if state else True,
                "retcode": 2 if state else 0,
                "success": not state,
                **({"out": "highstate"} if state else {}),
            }
            for name in names
        ]
        yield jid, load, names, returns


def run(master, jobs: int, minions: int, via_store_job: bool) -> dict:
    """Ingest the workload; the clock runs from the first call to the last commit."""
    prep = master.returners[f"{master.cache}.prep_jid"]
    save_load = master.returners[f"{master.cache}.save_load"]
    returner = master.returners[f"{master.cache}.returner"]
    count = 0
    publish_s = 0.0
    work = list(workload(jobs, minions))
    calls: list[float] = []
    clock = time.perf_counter
    start = clock()
    for jid, load, names, returns in work:
        t0 = clock()
        prep(nocache=False, passed_jid=jid)
        save_load(jid, load, names)
        publish_s += clock() - t0
        for ret in returns:
            t1 = clock()
            if via_store_job:
                salt.utils.job.store_job(master.opts, ret, mminion=master.mminion)
            else:
                returner(ret)
            calls.append(clock() - t1)
        count += len(returns)
    t0 = clock()
    flush_all(timeout=600)  # a return counts once it is in the database (the engine's too)
    end = clock()
    calls.sort()
    return {
        "returns": count,
        "seconds": end - start,
        "publish_s": publish_s,
        "returns_s": end - start - publish_s,
        "final_commit_s": end - t0,
        "p50_us": calls[len(calls) // 2] * 1e6,
        "p99_us": calls[int(len(calls) * 0.99)] * 1e6,
    }


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


CACHES = ("local_cache", "halite+engine", "halite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--minions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per cache")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="halite-bench-"))
    rates: dict[str, list[float]] = {}
    details: dict[str, dict] = {}
    try:
        # Rounds alternate the caches so that a slow spell of a shared machine hits all,
        # and each round compares them run back to back. Every run starts with the disk's
        # write-back done (sync), and the caches stay until the end, as on a master.
        for round_ in range(args.rounds):
            for via in (False, True):
                for cache in CACHES:
                    root = workdir / f"{cache}-{via}-{round_}"
                    engine = cache == "halite+engine"
                    master = make_master(root, cache.split("+")[0], engine=engine)
                    key = f"{cache}{' store_job' if via else ''}"
                    os.sync()
                    if engine:
                        with EngineCommitter(master.opts):
                            res = run(master, args.jobs, args.minions, via)
                    else:
                        res = run(master, args.jobs, args.minions, via)
                    verify(master, args.jobs, args.minions)
                    rates.setdefault(key, []).append(res["returns"] / res["seconds"])
                    if not via:
                        details.setdefault(key, {"p50": [], "p99": []})
                        details[key]["p50"].append(res["p50_us"])
                        details[key]["p99"].append(res["p99_us"])
                        if round_ == 0:
                            details[key]["reads"] = read_timings(master)
                            details[key]["disk"] = disk_usage(root / "cache")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def best(key: str) -> float:
        return max(rates[key])

    def spread(key: str) -> str:
        return ", ".join(f"{rate:.0f}" for rate in rates[key])

    def ratio(ours: str, theirs: str) -> str:
        per_round = [a / b for a, b in zip(rates[ours], rates[theirs], strict=True)]
        rounds = ", ".join(f"{r:.1f}x" for r in per_round)
        return f"min {min(per_round):.1f}x, median {statistics.median(per_round):.1f}x ({rounds})"

    print(
        f"ingest: {args.jobs} jobs x {args.minions} returns, one call per return, "
        f"{args.rounds} alternating rounds"
    )
    print("1) job cache calls through Salt's loader (prep_jid + save_load per job, returner per")
    print("   return), timed to the last commit:")
    for cache in CACHES:
        size, files = details[cache]["disk"]
        print(
            f"   {cache:<14} best {best(cache):>6.0f} returns/s   (rounds: {spread(cache)})"
            f"   {size / 1e6:.1f} MB in {files} files"
        )
    for cache in CACHES[1:]:
        print(f"   RATIO {cache} / local_cache: {ratio(cache, 'local_cache')}")
    print("2) the same through salt.utils.job.store_job (Salt's whole per-return path, whose own")
    print("   cost is the same for both caches):")
    for cache in CACHES:
        key = cache + " store_job"
        print(f"   {cache:<14} best {best(key):>6.0f} returns/s   (rounds: {spread(key)})")
    for cache in CACHES[1:]:
        key = cache + " store_job"
        print(f"   RATIO {cache} / local_cache: {ratio(key, 'local_cache store_job')}")
    print("3) reads after ingest (best of runs, ms):")
    theirs = details["local_cache"]["reads"]
    for cache in CACHES[1:]:
        ours = details[cache]["reads"]
        for name in ours:
            a, b = ours[name] * 1000, theirs[name] * 1000
            print(f"   {cache:<14} {name:<20} {a:8.2f}  local_cache {b:8.2f}  ratio {b / a:6.1f}x")
    print("4) one returner call in Salt's worker (median over rounds, microseconds):")
    for cache in CACHES:
        p50 = statistics.median(details[cache]["p50"])
        p99 = statistics.median(details[cache]["p99"])
        print(f"   {cache:<14} p50 {p50:7.1f} us   p99 {p99:7.1f} us")


if __name__ == "__main__":
    main()
