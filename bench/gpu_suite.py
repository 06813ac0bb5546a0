"""Every GPU measurement of the project, in parts that each fit one 10-minute device command.

Issue 19: the first session lent a GPU should spend its minutes measuring, not preparing.
The device machine (one H100, 16 cores, no network) gets a copy of the repository's working
tree plus the ignored paths a call *carries* (64 MiB in all per call), so the data it needs
is staged here first, on the CPU machine, at no device time::

    python bench/gpu_suite.py stage                 # once, here: ~1 min, writes data/gpu-suite/

then one device command per part (``run`` with the ``carry`` given; its files come back
from ``$OUT``), then the tables for ``bench/README.md``::

    part1  carry data/gpu-suite/imagenet data/gpu-suite/wheels   ~7 min
           bf16 matmul ceiling; train_throughput.py at batch 128, 256, 512: classic baseline,
           torchvision's alexnet, the fast path (torch.compile); end_to_end.py on the
           prepared ImageNet samples: CPU decode with 16 workers vs nvJPEG; the
           torch.profiler breakdown (LRN, conv1, optimiser, host-to-device transfer)
    part2  carry data/gpu-suite/cifar10 data/gpu-suite/wheels    ~7 min
           the CUDA tests (pytest -m gpu tests/test_gpu.py); the fast path with
           --compile-mode reduce-overhead (CUDA graphs) at 128, 256, 512; cifar10.py with a
           60-second budget
    part3  carry data/gpu-suite/cifar10 data/gpu-suite/wheels    ~9.5 min
           cifar10.py with the longest budget that fits one command (8.8 min, not 10:
           a 10-minute budget cannot finish inside a 10-minute command)

    python3 bench/gpu_suite.py part1                # on the device machine; writes $OUT
    python bench/gpu_suite.py report DIR...         # here: one markdown from the parts' JSON

Each part writes ``<part>.md`` (tables, with device, torch version, date and the exact
commands), ``<part>.json`` (every figure), ``<part>.log`` (all output) and, for part1,
``profile.txt``, into ``--out`` (default ``$OUT`` where set, else ``artifacts/gpu-suite``).
A part stops each step at its own time limit (``--time-limit``, 570 s) so that what was
measured still comes back, and exits non-zero when any step failed, timed out or was not
reached: nothing is skipped silently. ``--dry-run`` runs the same steps on the CPU at tiny
sizes on synthetic data (``stage --dry-run`` makes it); ``tests/test_gpu.py`` runs it in the
default suite, so the suite cannot rot before a GPU is lent.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DEFAULT_STAGE = ROOT / "data" / "gpu-suite"
# `../shared/data` beside the checkout (data/README.md); a worktree one level deeper finds it too.
DEFAULT_SHARED = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")
                       if p.is_dir()), ROOT.parent / "shared" / "data")
SIMPLEJPEG = "simplejpeg==1.9.0"  # constraints.txt's pin; the GPU image lacks simplejpeg
PARTS = ("part1", "part2", "part3")
# Issue 19's targets, checked by `report`.
TARGET_TRAIN_IPS = 40_000
TARGET_TRAIN_RATIO = 3.0
TARGET_E2E_IPS = 25_000
TARGET_CIFAR_TOP1 = 0.93
LONG_CIFAR_MINUTES = 8.8  # part3: the longest budget that ends inside one 10-minute command


# --------------------------------------------------------------------------- staging (CPU side)


def stage_cifar(src: Path, dest: Path) -> Path:
    """``src/<class>/*.jpg`` into one uncompressed zip (JPEGs do not compress): 50,000 small
    files would travel slowly and a tar pads each to 1.5 kB; the zip adds ~100 bytes each."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "cifar10-train.zip"
    tmp = out.with_suffix(".zip.part")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"error: no files under {src}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in files:
            zf.write(p, p.relative_to(src).as_posix())
    tmp.replace(out)
    return out


def stage_imagenet(src: Path, dest: Path, limit: int | None, size: int, workers: int) -> Path:
    """The ImageNet sample photos (``<synset>_<name>.JPEG``, flat) prepared at ``size`` px:
    class folders of symlinks, then ``prepare_dataset`` (JPEG shards, ~20 kB an image)."""
    import tempfile

    from alexnet.data.prepared import prepare_dataset

    photos = sorted(p for p in src.iterdir() if p.is_file())[:limit]
    if not photos:
        raise SystemExit(f"error: no photos in {src}")
    out = dest / "prepared"
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        for p in photos:
            cls = Path(tmp) / p.name.split("_", 1)[0]
            cls.mkdir(exist_ok=True)
            (cls / p.name).symlink_to(p.resolve())
        prepare_dataset(tmp, out, size=size, workers=workers, progress=False)
    return out


def stage_wheels(dest: Path) -> bool:
    """Download the x86-64 CPython 3.12 wheel of simplejpeg (the only project dependency of
    the training and data code that the GPU image lacks). False, loudly, when pip cannot."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
    for plat in platforms:
        cmd += ["--platform", plat]
    done = subprocess.run([*cmd, SIMPLEJPEG], check=False)
    if done.returncode != 0 or not list(dest.glob("simplejpeg-*.whl")):
        print(f"WARNING: could not download the {SIMPLEJPEG} wheel into {dest}; the GPU parts will stop at "
              "their environment check. Download it by hand (see /work/.library/device/README.md).",
              file=sys.stderr)
        return False
    return True


def stage_dry(dest: Path) -> None:
    """Synthetic stand-ins with the real layout, for ``--dry-run`` (random JPEGs)."""
    import numpy as np
    from PIL import Image

    from alexnet.data.prepared import prepare_dataset

    rng = np.random.default_rng(0)
    cifar = dest / "src-cifar10"
    photos = dest / "src-imagenet"
    for c in ("cat", "dog", "ship"):
        (cifar / c).mkdir(parents=True, exist_ok=True)
        (photos / c).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(cifar / c / f"{i:04d}.jpg")
            Image.fromarray(rng.integers(0, 256, (44, 52, 3), dtype=np.uint8)).save(photos / c / f"{i}.jpg")
    stage_cifar(cifar, dest / "cifar10")
    prepare_dataset(photos, dest / "imagenet" / "prepared", size=40, workers=1, progress=False)
    shutil.rmtree(cifar)
    shutil.rmtree(photos)


def cmd_stage(args: argparse.Namespace) -> int:
    dest: Path = args.dest
    if args.dry_run:
        stage_dry(dest)
        print(f"staged synthetic data in {dest}")
        return 0
    shared: Path = args.shared
    for sub in ("cifar10/train", "imagenet-samples"):
        if not (shared / sub).is_dir():
            raise SystemExit(f"error: {shared / sub} not found (pass --shared DIR)")
    t0 = time.perf_counter()
    z = stage_cifar(shared / "cifar10" / "train", dest / "cifar10")
    print(f"cifar10: {z} ({z.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    p = stage_imagenet(shared / "imagenet-samples", dest / "imagenet", args.limit, 256, args.workers)
    mib = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
    print(f"imagenet: {p} ({mib:.1f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    ok = args.no_wheels or stage_wheels(dest / "wheels")
    for part, carry in CARRY.items():
        total = sum(f.stat().st_size for c in carry for f in (dest / c).rglob("*") if f.is_file()) / 2**20
        shown = " ".join(_relative(str(dest / c)) for c in carry)
        print(f"{part}: carry {shown} ({total:.1f} MiB + the working tree; the limit is 64 MiB a call)")
    return 0 if ok else 1


# What each part reads from the staged folder: a device call must name these in `carry`.
CARRY = {"part1": ["imagenet", "wheels"], "part2": ["cifar10", "wheels"], "part3": ["cifar10", "wheels"]}


# --------------------------------------------------------------------------- steps


@dataclass
class Step:
    """One command of a part. ``kind`` says how its JSON becomes a table."""

    name: str
    argv: list[str]
    budget_s: float  # the most this step may run (also cut to what the part has left)
    kind: str  # environment | pytest | throughput | end_to_end | cifar10 | profile
    json_path: str | None = None


@dataclass
class StepResult:
    name: str
    kind: str
    command: str
    status: str  # ok | failed (rc N) | timed out | not run (...)
    seconds: float = 0.0
    data: Any = None


@dataclass
class Context:
    """Where a part reads and writes, and whether it runs at tiny sizes on the CPU."""

    stage: Path
    out: Path
    work: Path
    dry: bool
    in_process: bool = False  # dry runs in tests: scripts called in this interpreter (no torch import each)
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)


def _py(ctx: Context, script: str, *args: str) -> list[str]:
    return [ctx.python, str(BENCH / script), *args]


def _tp(ctx: Context, name: str, paths: str, mode: str) -> Step:
    """train_throughput.py over the batch sizes of the issue (tiny on the CPU)."""
    out = str(ctx.work / f"{name}.json")
    if ctx.dry:
        argv = _py(ctx, "train_throughput.py", "--device=cpu", "--model=alexnet_small",
                   '--model-options={"norm": "lrn", "width": 0.125}', "--num-classes=10", "--batch-sizes=2",
                   "--steps=1", "--warmup=0", "--no-compile", "--matmul-size=64", f"--paths={paths}",
                   f"--compile-mode={mode}", f"--json={out}")
    else:
        argv = _py(ctx, "train_throughput.py", "--device=cuda", "--batch-sizes=128,256,512", "--steps=50",
                   "--warmup=10", f"--paths={paths}", f"--compile-mode={mode}", f"--json={out}")
    return Step(name, argv, 330 if paths != "fast" else 270, "throughput", out)


def _cifar(ctx: Context, name: str, minutes: float) -> Step:
    out = str(ctx.work / f"{name}.json")
    train = str(ctx.work / "cifar10" / "train")
    if ctx.dry:
        argv = _py(ctx, "cifar10.py", "--train", train, "--holdout=2", "--device=cpu", "--epochs=1",
                   f"--minutes={minutes}", "--set", "batch_size=8", "--set",
                   "model_options={width: 0.125}", f"--json={out}")
    else:
        argv = _py(ctx, "cifar10.py", "--train", train, "--holdout=500", "--device=cuda",
                   f"--minutes={minutes}", f"--json={out}")
    return Step(name, argv, minutes * 60 + 60, "cifar10", out)


def plan(part: str, ctx: Context) -> list[Step]:
    """The steps of ``part``, most important first (a part that runs out of time loses the last)."""
    env = Step("environment", [ctx.python, str(Path(__file__).resolve()), "env", *(["--dry-run"] if ctx.dry else []),
                               f"--json={ctx.work / 'environment.json'}"], 60, "environment",
               str(ctx.work / "environment.json"))
    prof_json = str(ctx.work / "profile.json")
    prof_args = ["--device=cpu", "--model=alexnet_small", "--image-size=32", "--batch-size=2", "--steps=1",
                 '--model-options={"norm": "lrn", "width": 0.125}', "--compile-backend=aot_eager"] if ctx.dry else ["--device=cuda", "--batch-size=256"]
    prof = Step("profile", [ctx.python, str(Path(__file__).resolve()), "profile", *prof_args, f"--json={prof_json}",
                            f"--table={ctx.out / 'profile.txt'}"], 120, "profile", prof_json)
    if part == "part1":
        prepared = str(ctx.stage / "imagenet" / "prepared")
        e2e_json = str(ctx.work / "end_to_end.json")
        if ctx.dry:
            e2e = _py(ctx, "end_to_end.py", prepared, "--device=cpu", "--model=alexnet_small",
                      '--model-options={"width": 0.125}', "--crop=32", "--batch-size=4", "--steps=2",
                      "--warmup=0", "--workers=0", "--no-compile", f"--json={e2e_json}")
        else:
            e2e = _py(ctx, "end_to_end.py", prepared, "--device=cuda", "--batch-size=256", "--workers=16",
                      "--steps=150", "--warmup=10", f"--json={e2e_json}")
        return [env, _tp(ctx, "throughput", "baseline,torchvision,fast", "default"),
                Step("end_to_end", e2e, 210, "end_to_end", e2e_json), prof]
    if part == "part2":
        xml = str(ctx.work / "gpu-tests.xml")
        tests = Step("gpu_tests", [ctx.python, "-m", "pytest", str(ROOT / "tests" / "test_gpu.py"), "-m", "gpu",
                                   "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"], 240, "pytest", xml)
        return [env, tests, _tp(ctx, "cuda_graphs", "fast", "reduce-overhead"), _cifar(ctx, "cifar10_60s", 1.0)]
    if part == "part3":
        # The whole budget (data loading included) plus start-up, the environment check and
        # unpacking must end inside the part's 570 s: 8.8 minutes is the longest that does.
        return [env, _cifar(ctx, "cifar10_long", 0.2 if ctx.dry else LONG_CIFAR_MINUTES)]
    raise SystemExit(f"error: unknown part {part!r}; choose from {PARTS}")


def _stream(proc: subprocess.Popen, log) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()


class _Tee:
    """A text stream writing to several (stdout and the part's log)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def _call_in_process(step: Step, log: Any) -> int:
    """Run a ``python bench/<script>.py ARGS`` step by calling the script's ``main(ARGS)`` here
    (dry runs from the test suite: the commands and their arguments are the same, only the
    process is not). Exit status as a process would give it."""
    import importlib
    import traceback

    script = Path(step.argv[1])
    tee = _Tee(sys.stdout, log)
    try:
        with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
            if script.resolve() == Path(__file__).resolve():
                return int(main(step.argv[2:]) or 0)
            if str(BENCH) not in sys.path:
                sys.path.insert(0, str(BENCH))
            importlib.import_module(script.stem).main(step.argv[2:])
            return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        traceback.print_exc(file=tee)
        return 1


def run_step(step: Step, ctx: Context, timeout: float, log) -> StepResult:
    """Run one step, its output passed through to stdout and the log; never raises."""
    import threading

    command = shlex.join(_relative(a) for a in step.argv)
    banner = f"\n===== {step.name}: {command} (limit {timeout:.0f} s)\n"
    sys.stdout.write(banner)
    log.write(banner)
    if step.json_path:  # a file left by an earlier attempt must never pass for this one's results
        Path(step.json_path).unlink(missing_ok=True)
    t0 = time.perf_counter()
    if ctx.in_process and step.argv[1].endswith(".py"):
        rc = _call_in_process(step, log)
        data = _read_result(step) if step.json_path and Path(step.json_path).is_file() else None
        status = "ok" if rc == 0 else f"failed (rc {rc})"
        if status == "ok" and step.json_path and data is None:
            status = "failed (no results written)"
        return StepResult(step.name, step.kind, command, status, time.perf_counter() - t0, data)
    try:
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    except OSError as exc:
        return StepResult(step.name, step.kind, command, f"failed ({exc})")
    reader = threading.Thread(target=_stream, args=(proc, log), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else f"failed (rc {rc})"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)  # its own session: the loader workers go too
        proc.wait()
        status = f"timed out ({timeout:.0f} s)"
    reader.join(timeout=5)
    seconds = time.perf_counter() - t0
    data = None
    if step.json_path and Path(step.json_path).is_file():
        data = _read_result(step)
    if status == "ok" and step.json_path and data is None:
        status = "failed (no results written)"
    if status == "ok" and not ctx.dry:
        missing = incomplete(step, data)
        status = f"incomplete ({missing})" if missing else status
    return StepResult(step.name, step.kind, command, status, seconds, data)


def incomplete(step: Step, data: Any) -> str | None:
    """What a step that exited 0 on the GPU still failed to measure (a script skips what the
    machine cannot run, with a message; on the GPU machine that is a failure to report)."""
    if step.kind == "pytest" and not (data or {}).get("passed"):
        return "no CUDA test ran: all skipped or deselected"
    if step.kind == "end_to_end" and "gpu" not in (data or {}).get("results", {}):
        return "the nvJPEG decode did not run: see the log"
    if step.kind == "throughput":
        wanted = next((a.split("=", 1)[1] for a in step.argv if a.startswith("--paths=")), "").split(",")
        got = {r["path"] for r in (data or {}).get("results", [])}
        lost = [p for p in wanted if p and p not in got]
        if lost:
            return f"no figures for {', '.join(lost)}: see the log"
    return None


def _relative(arg: str) -> str:
    """Arguments as the README shows them: paths inside the repo relative to its root."""
    root = str(ROOT) + os.sep
    return arg.replace(root, "") if root in arg else arg


def _read_result(step: Step) -> Any:
    path = Path(step.json_path or "")
    if step.kind == "pytest":
        return parse_junit(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"error": f"unreadable results {path.name}: {exc}"}


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and the failing tests' names from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {"error": "no testsuite in the JUnit file"}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed, skipped = [], []
    for case in suite.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped.append(f"{name}: {case.find('skipped').get('message', '')}")  # type: ignore[union-attr]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed, "skipped_tests": skipped}


def setup_env(ctx: Context) -> None:
    """Children's environment: the staged wheels installed to a private folder, ``src`` on the path."""
    paths = [str(ROOT / "src")]
    wheels = sorted((ctx.stage / "wheels").glob("*.whl"))
    if wheels:
        site = ctx.work / "site"
        cmd = [ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
        print("installing staged wheels:", " ".join(w.name for w in wheels), flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            print("WARNING: installing the staged wheels failed; the environment check will say what is missing",
                  file=sys.stderr)
        paths.insert(0, str(site))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ctx.work / "inductor-cache"))
    if ctx.dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, even on a GPU machine
    ctx.env = env


def unpack_cifar(ctx: Context) -> None:
    z = ctx.stage / "cifar10" / "cifar10-train.zip"
    dest = ctx.work / "cifar10" / "train"
    if not z.is_file():
        raise FileNotFoundError(f"{z} is missing: run `python bench/gpu_suite.py stage` and carry data/gpu-suite/cifar10")
    if dest.exists():
        shutil.rmtree(dest)
    with zipfile.ZipFile(z) as zf:
        zf.extractall(dest)


def run_part(part: str, ctx: Context, time_limit: float, steps: Sequence[Step] | None = None,
             after_step: Callable[[list[StepResult]], None] | None = None) -> list[StepResult]:
    """Run the steps of ``part`` in order within ``time_limit`` seconds; a step the part has no
    time left for (under 20 s) is recorded as not run. The environment step failing stops the
    rest. ``after_step`` sees the results so far after each step (to save them as they come)."""
    t_end = time.perf_counter() + time_limit
    steps = list(plan(part, ctx) if steps is None else steps)
    results: list[StepResult] = []
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    with (ctx.out / f"{part}.log").open("a") as log:
        if any(s.kind == "cifar10" for s in steps):
            try:
                unpack_cifar(ctx)
            except (OSError, zipfile.BadZipFile) as exc:
                print(f"ERROR: {exc}", file=sys.stderr)
                log.write(f"ERROR: {exc}\n")
        stop_reason = None
        for step in steps:
            left = t_end - time.perf_counter()
            command = shlex.join(_relative(a) for a in step.argv)
            if stop_reason or left < 20:
                reason = stop_reason or "the part's time limit was reached"
                results.append(StepResult(step.name, step.kind, command, f"not run ({reason})"))
                continue
            r = run_step(step, ctx, min(step.budget_s, left), log)
            results.append(r)
            if step.kind == "environment" and r.status != "ok":
                stop_reason = "the environment check failed"
            if after_step is not None:
                after_step(results)
    return results


def cmd_part(args: argparse.Namespace) -> int:
    out = args.out or Path(os.environ.get("OUT") or ROOT / "artifacts" / "gpu-suite")
    work = args.work or Path("/tmp/gpu-suite" if not args.dry_run else out / "work")
    parts = list(PARTS) if args.part == "all" else [args.part]
    if args.in_process and not args.dry_run:
        raise SystemExit("error: --in-process is for --dry-run only (no time limits in-process)")
    ctx = Context(stage=args.data, out=out, work=work, dry=args.dry_run, in_process=args.in_process)
    ctx.work.mkdir(parents=True, exist_ok=True)
    setup_env(ctx)
    bad = 0
    for part in parts:
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

        def save(results: list[StepResult], part: str = part, started: str = started) -> str:
            """Write the part's JSON and tables; after every step, so that a command cut off
            by the machine's limit still returns what it measured."""
            report = {"part": part, "started_utc": started, "dry_run": ctx.dry, "steps": [asdict(r) for r in results]}
            (out / f"{part}.json").write_text(json.dumps(report, indent=2))
            md = render([report])
            (out / f"{part}.md").write_text(md)
            return md

        results = run_part(part, ctx, args.time_limit, after_step=save)
        print("\n" + save(results))
        failed = [r for r in results if r.status != "ok"]
        for r in failed:
            print(f"FAILED STEP {part}/{r.name}: {r.status}", file=sys.stderr)
        bad += len(failed)
    print(f"\n{'ALL STEPS OK' if not bad else f'{bad} STEP(S) DID NOT SUCCEED'}; results in {out}")
    return 0 if not bad else 1


# --------------------------------------------------------------------------- environment check


def cmd_env(args: argparse.Namespace) -> int:
    """What the machine has; fails (non-zero) when something the parts need is missing."""
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "date_utc": dt.datetime.now(dt.UTC).isoformat()}
    problems = []
    import torch
    import torch.distributed as dist

    def safe(fn: Callable[[], Any]) -> Any:
        """A description must never be what stops the part: an API difference reads as text."""
        try:
            return fn()
        except Exception as exc:
            return f"unknown ({type(exc).__name__}: {exc})"

    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
        info["cudnn"] = safe(torch.backends.cudnn.version)
        info["nccl"] = safe(lambda: str(torch.cuda.nccl.version()) if dist.is_nccl_available() else None)
        info["bf16"] = torch.cuda.is_bf16_supported()
        if not info["bf16"]:
            problems.append("this GPU has no native bf16 (the fast path's figures would be fp32)")
    elif not args.dry_run:
        problems.append("CUDA is not available")
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, check=False)
        info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    info["cpu_count"] = os.cpu_count()
    # torchvision is needed by two measurements only (its alexnet, nvJPEG): those say so themselves.
    for mod in ("torchvision", "simplejpeg", "PIL", "numpy", "safetensors", "alexnet.training.trainer", "pytest"):
        try:
            m = __import__(mod, fromlist=["_"])
            info[mod] = getattr(m, "__version__", "ok")
        except Exception as exc:  # ImportError, or a broken build raising at import time
            info[mod] = f"missing ({type(exc).__name__}: {exc})"
            if mod != "torchvision":
                problems.append(f"{mod} is not importable ({exc})")
            else:
                print(f"WARNING: torchvision is not importable ({exc}): no torchvision baseline, no nvJPEG",
                      file=sys.stderr)
    info["problems"] = problems
    for k, v in info.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2, default=str))
    if problems:
        print("ERROR: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- profile


def cmd_profile(args: argparse.Namespace) -> int:
    """Where a training step of the fast path spends its time.

    Two views. (1) torch.profiler over a few eager fast-path steps (bf16 autocast,
    channels_last, fused SGD): the kernels by total device time. (2) Each component timed
    alone with the real shapes, as a share of the eager step: conv1 (11x11 stride 4) forward
    + backward, the two LRNs forward + backward (the project's slice-sum LRN and PyTorch's
    ``F.local_response_norm`` for comparison), the optimiser step, and the host-to-device copy
    of a pinned uint8 batch at the prepared size (256 px) as the loader delivers it. The
    compiled step fuses LRN with its neighbours, so its shares differ; its total is in
    the throughput tables.
    """
    sys.path.insert(0, str(BENCH))
    import torch
    import torch.nn.functional as F
    from _common import (
        bf16_supported,
        describe_hardware,
        make_sgd,
        maybe_autocast,
        resolve_device,
        time_steps,
    )
    from torch.profiler import ProfilerActivity, profile

    from alexnet.models import create_model

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    options = json.loads(args.model_options)
    model = create_model(args.model, num_classes=args.num_classes, **options).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    side = args.image_size or model.input_size
    bf16 = bf16_supported(device)
    opt = make_sgd(model.parameters(), lr=1e-3, fast=True, device=device)
    x = torch.randn(args.batch_size, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    shapes: dict[str, tuple[torch.Size, torch.dtype]] = {}

    def keep_shape(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            shapes.setdefault(name, (inputs[0].shape, inputs[0].dtype))

        return hook

    hooks = [getattr(model, n).register_forward_hook(keep_shape(n)) for n in ("norm1", "norm2") if hasattr(model, n)]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with maybe_autocast(device, bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    step()
    for h in hooks:
        h.remove()
    steps, warmup = args.steps, 1 if not cuda else 5
    full = time_steps(step, steps, warmup, device)

    def fwd_bwd(module: torch.nn.Module, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                input_grad: bool = True) -> Callable[[], None]:
        """One forward + backward of ``module`` alone on an input as the step gives it (conv1's
        input needs no gradient in the step; an LRN's input is conv output, bf16 under autocast)."""
        t = torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        t.requires_grad_(input_grad)

        def run() -> None:
            with maybe_autocast(device, bf16):
                out = module(t)
            out.float().sum().backward()

        return run

    parts: dict[str, float] = {}
    parts["conv1 11x11 stride 4 (forward + backward)"] = time_steps(
        fwd_bwd(model.conv1, x.shape, input_grad=False), steps, warmup, device)
    from train_throughput import TorchLRN

    lrn_fast = lrn_torch = 0.0
    for name in ("norm1", "norm2"):
        module = getattr(model, name)
        if name in shapes and hasattr(module, "groups"):  # an LRN (alexnet_small may have BN here)
            shape, dtype = shapes[name]
            lrn_fast += time_steps(fwd_bwd(module, shape, dtype), steps, warmup, device)
            lrn_torch += time_steps(fwd_bwd(TorchLRN(module), shape, dtype), steps, warmup, device)
    parts["LRN x2, slice-sum (forward + backward)"] = lrn_fast
    parts["LRN x2, F.local_response_norm (forward + backward; the baseline's)"] = lrn_torch
    parts["optimiser step (fused SGD)" if cuda else "optimiser step (foreach SGD)"] = time_steps(
        opt.step, steps, warmup, device)
    host = torch.randint(0, 256, (args.batch_size, 3, args.prepared_size, args.prepared_size), dtype=torch.uint8)
    if cuda:
        host = host.pin_memory()
    parts[f"host-to-device copy, uint8 {args.prepared_size} px batch (pinned)"] = time_steps(
        lambda: host.to(device, non_blocking=True), steps, warmup, device)

    def kernels(fn: Callable[[], None]) -> tuple[list[dict[str, Any]], str]:
        """torch.profiler over ``steps`` calls: the top kernels (device time on CUDA, CPU
        time elsewhere) as rows, and the profiler's own table."""
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
        averages = prof.key_averages()
        if cuda:  # the kernels are rows of their own; their self device time adds up to the step's

            def self_us(e: Any) -> float:
                return float(getattr(e, "self_device_time_total", 0.0))

            events = [e for e in averages if str(getattr(e, "device_type", "")).endswith("CUDA")]
            events = events or [e for e in averages if self_us(e) > 0]
        else:

            def self_us(e: Any) -> float:
                return float(e.self_cpu_time_total)

            events = list(averages)
        total = sum(self_us(e) for e in events) or 1.0
        rows = [{"kernel": e.key, "ms_per_step": self_us(e) / 1e3 / steps, "share": self_us(e) / total,
                 "calls_per_step": e.count / steps} for e in sorted(events, key=self_us, reverse=True)[: args.top]]
        sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
        return rows, averages.table(sort_by=sort_by, row_limit=args.top)

    top, table = kernels(step)
    compiled: dict[str, Any] = {}
    if args.compiled:
        # The fast path as measured: inductor fuses the LRN with its neighbours, so its kernels
        # (triton_*) carry the names of the fused ops rather than of the layers.
        net = torch.compile(model, dynamic=False, backend=args.compile_backend)

        def step_compiled() -> None:
            opt.zero_grad(set_to_none=True)
            with maybe_autocast(device, bf16):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        step_compiled()
        compile_s = time.perf_counter() - t0
        seconds = time_steps(step_compiled, steps, warmup, device)
        rows, ctable = kernels(step_compiled)
        compiled = {"compiled_step_ms": seconds * 1e3, "compiled_images_per_s": args.batch_size / seconds,
                    "compile_s": compile_s, "top_kernels_compiled": rows}
        table += "\n\ncompiled fast-path step (torch.compile, default mode):\n" + ctable
    report = {
        "hardware": describe_hardware(device),
        "model": args.model,
        "batch_size": args.batch_size,
        "image_size": side,
        "bf16": bf16,
        "eager_step_ms": full * 1e3,
        "eager_images_per_s": args.batch_size / full,
        "components": [{"component": k, "ms": v * 1e3, "share_of_eager_step": v / full} for k, v in parts.items()],
        "top_kernels": top,
        **compiled,
    }
    print(describe_hardware(device))
    print(f"eager fast-path step: {full * 1e3:.2f} ms ({args.batch_size / full:,.0f} images/s)")
    for c in report["components"]:
        print(f"  {c['component']:<70} {c['ms']:8.2f} ms  {c['share_of_eager_step']:6.1%}")
    print(table)
    if args.table:
        Path(args.table).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- tables


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def _baseline(data: dict[str, Any] | None) -> dict[int, float]:
    """Baseline images/s by batch size (part1's throughput step; part2's rows compare with it)."""
    return {r["batch_size"]: r["images_per_s"] for r in (data or {}).get("results", []) if r["path"] == "baseline"}


def _tp_rows(data: dict[str, Any], baseline: dict[int, float]) -> list[str]:
    compiled = data.get("compile", "default")
    how = {"eager": "eager", "default": "torch.compile"}.get(compiled, f"torch.compile {compiled}")
    names = {"baseline": "classic baseline (fp32, NCHW, eager, torch LRN, per-parameter SGD)",
             "torchvision": "torchvision alexnet (classic setting)",
             "fast": f"fast path ({how}, bf16, channels_last, fused SGD, slice-sum LRN)"}
    if compiled == "reduce-overhead":
        names["fast"] = "fast path + CUDA graphs (torch.compile reduce-overhead)"
    rows = []
    by_batch: dict[int, dict[str, dict]] = {}
    for r in data.get("results", []):
        by_batch.setdefault(r["batch_size"], {})[r["path"]] = r
    for bs, paths in sorted(by_batch.items()):
        base = baseline.get(bs)
        for path, r in paths.items():
            ratio = r["images_per_s"] / base if base and path != "baseline" else None
            rows.append(f"| {bs} | {names.get(path, path)} | {_fmt(r['images_per_s'])} | {r['tflops']:.1f} | "
                        f"{_fmt(r.get('ratio_to_matmul'), '.1%')} | {r['step_ms']:.2f} | "
                        f"{_fmt(ratio, '.2f')}{'x' if ratio else ''} | {r['first_step_s']:.1f} |")
    return rows


def render(reports: Sequence[dict[str, Any]]) -> str:
    """Markdown for ``bench/README.md`` from part reports (``<part>.json``)."""
    lines: list[str] = []
    steps = {s["name"]: s for rep in reports for s in rep["steps"]}
    env = (steps.get("environment") or {}).get("data") or {}
    dry = any(rep.get("dry_run") for rep in reports)
    parts = ", ".join(f"{r['part']} ({r['started_utc']})" for r in reports)
    lines.append(f"Parts: {parts}." + (" **DRY RUN on the CPU at tiny sizes: not measurements.**" if dry else ""))
    lines.append(f"Device: {env.get('device', env.get('nvidia_smi', 'unknown'))}; nvidia-smi: "
                 f"{env.get('nvidia_smi', '-')}; torch {env.get('torch', '?')} (CUDA {env.get('cuda')}, cuDNN "
                 f"{env.get('cudnn')}, NCCL {env.get('nccl')}); torchvision {env.get('torchvision', '?')}; Python "
                 f"{env.get('python', '?')}; {env.get('cpu_count', '?')} CPU cores.")
    lines += ["", "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} |" for s in steps.values()]

    tp, graphs = steps.get("throughput", {}).get("data"), steps.get("cuda_graphs", {}).get("data")
    if tp or graphs:
        peak = [d.get("matmul_tflops") for d in (tp, graphs) if d and d.get("matmul_tflops")]
        lines += ["", "### Training throughput (synthetic data on the device)", "",
                  f"bf16 matmul ceiling measured in the same run(s): {', '.join(f'{p:.3g}' for p in peak)} TFLOP/s. "
                  "TFLOP/s count 3x the forward FLOPs per training image.", "",
                  "| batch | path | images/s | TFLOP/s | of bf16 matmul | ms/step | vs baseline "
                  "| first step s (compiles) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += _tp_rows(tp or {}, _baseline(tp)) + _tp_rows(graphs or {}, _baseline(tp))
    e2e = steps.get("end_to_end", {}).get("data")
    if e2e:
        lines += ["", "### End to end (prepared ImageNet samples, 256 px JPEG shards)", "",
                  f"batch {e2e.get('batch_size')}, {e2e.get('workers')} loader workers, {e2e.get('images')} images "
                  "(several epochs).", "",
                  "| decode | compute only images/s | end to end images/s | blocked on loader | GPU idle |",
                  "| --- | --- | --- | --- | --- |"]
        for decode, r in e2e.get("results", {}).items():
            lines.append(f"| {'CPU (simplejpeg in the workers)' if decode == 'cpu' else 'GPU (nvJPEG)'} | "
                         f"{_fmt(r['compute_images_per_s'])} | {_fmt(r['end_to_end_images_per_s'])} | "
                         f"{r['loader_wait_fraction']:.1%} | {r['device_idle_fraction']:.1%} |")
        if "gpu" not in e2e.get("results", {}):
            lines.append("| GPU (nvJPEG) | not run: see the log (torchvision or CUDA missing) | | | |")
    cif = [(n, steps[n]["data"]) for n in ("cifar10_60s", "cifar10_long") if steps.get(n, {}).get("data")]
    if cif:
        lines += ["", "### CIFAR-10 on a time budget (45,000 train / 5,000 held out, last 500 per class)", "",
                  "| budget | epochs | train images/s | inference images/s | elapsed | top-1 single | top-1 flip-averaged |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for _, d in cif:
            if "top1" in d:
                lines.append(f"| {d.get('budget_minutes', 0) * 60:.0f} s | {d['epochs']} | {_fmt(d['train_images_per_s'])} "
                             f"| {_fmt(d['inference_images_per_s'])} | {d['elapsed_s']:.0f} s | {d['top1']:.1%} | "
                             f"**{d['top1_flip']:.1%}** |")
    prof = steps.get("profile", {}).get("data")
    if prof and "components" in prof:
        lines += ["", f"### Where the time goes (eager fast-path step, batch {prof['batch_size']}: "
                      f"{prof['eager_step_ms']:.2f} ms, {_fmt(prof['eager_images_per_s'])} images/s)", "",
                  "| component (timed alone, real shapes) | ms | share of the eager step |", "| --- | --- | --- |"]
        lines += [f"| {c['component']} | {c['ms']:.2f} | {c['share_of_eager_step']:.1%} |" for c in prof["components"]]
        lines += ["", "| top kernels (torch.profiler) | ms/step | share | calls/step |", "| --- | --- | --- | --- |"]
        lines += [f"| `{k['kernel'][:90]}` | {k['ms_per_step']:.3f} | {k['share']:.1%} | {k['calls_per_step']:.0f} |"
                  for k in prof.get("top_kernels", [])]
        if prof.get("top_kernels_compiled"):
            lines += ["", f"Compiled fast-path step (torch.compile, default mode): {prof['compiled_step_ms']:.2f} ms, "
                          f"{_fmt(prof['compiled_images_per_s'])} images/s (compiled in {prof['compile_s']:.0f} s).",
                      "", "| top kernels, compiled (torch.profiler) | ms/step | share | calls/step |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| `{k['kernel'][:90]}` | {k['ms_per_step']:.3f} | {k['share']:.1%} | "
                      f"{k['calls_per_step']:.0f} |" for k in prof["top_kernels_compiled"]]
    tests = steps.get("gpu_tests", {}).get("data")
    if tests and "tests" in tests:
        lines += ["", f"### CUDA tests: {tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                      f"{tests['skipped']} skipped"]
        lines += [f"- FAILED {n}" for n in tests["failed"]] + [f"- skipped {n}" for n in tests["skipped_tests"]]
    lines += ["", "### Unit atlas and attribution of the paper model", "",
              "**Slot: not built yet** (issue 19 leaves it open; nothing is measured for it here)."]
    lines += ["", "### Targets (issue 19)", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(steps, dry)]
    lines += ["", "Commands (from the repository root; `python3` is the device's):", "", "```"]
    lines += [s["command"] for s in steps.values()]
    lines += ["```", ""]
    return "\n".join(lines)


def targets(steps: dict[str, dict], dry: bool) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for issue 19's three targets; 'not measured' where absent."""

    def verdict(ok: bool) -> str:
        return "dry run: no verdict" if dry else ("**met**" if ok else "**not met**")

    out = []
    fast = [r for k in ("throughput", "cuda_graphs") for r in ((steps.get(k, {}).get("data") or {}).get("results", []))
            if r["path"] == "fast"]
    base = _baseline(steps.get("throughput", {}).get("data"))
    t = f"paper model >= {TARGET_TRAIN_IPS:,} images/s (synthetic) and >= {TARGET_TRAIN_RATIO:g}x the baseline"
    if fast:
        best = max(fast, key=lambda r: r["images_per_s"])
        ratio = best["images_per_s"] / base[best["batch_size"]] if best["batch_size"] in base else None
        ok = best["images_per_s"] >= TARGET_TRAIN_IPS and ratio is not None and ratio >= TARGET_TRAIN_RATIO
        vs = f"{ratio:.2f}x the baseline" if ratio is not None else "no baseline at that batch"
        out.append((t, f"{best['images_per_s']:,.0f} images/s at batch {best['batch_size']}, {vs}", verdict(ok)))
    else:
        out.append((t, "-", "not measured"))
    e2e = ((steps.get("end_to_end", {}).get("data") or {}).get("results") or {})
    t = f">= {TARGET_E2E_IPS:,} images/s end to end from prepared JPEG data"
    if e2e:
        best_d, best = max(e2e.items(), key=lambda kv: kv[1]["end_to_end_images_per_s"])
        out.append((t, f"{best['end_to_end_images_per_s']:,.0f} images/s ({best_d} decode)",
                    verdict(best["end_to_end_images_per_s"] >= TARGET_E2E_IPS)))
    else:
        out.append((t, "-", "not measured"))
    c = steps.get("cifar10_60s", {}).get("data") or {}
    t = f"CIFAR-10 >= {TARGET_CIFAR_TOP1:.0%} within 60 seconds"
    if "top1_flip" in c:
        ok = c["top1_flip"] >= TARGET_CIFAR_TOP1 and c["elapsed_s"] <= 60 * 1.02
        out.append((t, f"{c['top1_flip']:.1%} in {c['elapsed_s']:.0f} s", verdict(ok)))
    else:
        out.append((t, "-", "not measured"))
    return out


def cmd_report(args: argparse.Namespace) -> int:
    reports = []
    for item in args.paths:
        p = Path(item)
        files = sorted(p.glob("part*.json")) if p.is_dir() else [p]
        reports += [json.loads(f.read_text()) for f in files]
    if not reports:
        raise SystemExit("error: no part*.json found")
    text = render(reports)
    if args.write:
        Path(args.write).write_text(text)
    print(text)
    return 0


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="here, before any device call: data and wheels into data/gpu-suite")
    s.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data folder (../shared/data)")
    s.add_argument("--dest", type=Path, default=DEFAULT_STAGE)
    s.add_argument("--limit", type=int, default=None, help="use at most this many ImageNet photos (default all)")
    s.add_argument("--workers", type=int, default=2, help="processes preparing the ImageNet photos")
    s.add_argument("--no-wheels", action="store_true", help="do not download the simplejpeg wheel")
    s.add_argument("--dry-run", action="store_true", help="synthetic tiny data instead (for --dry-run parts)")
    for name in (*PARTS, "all"):
        s = sub.add_parser(name, help="all parts in one go (dry runs; a GPU run needs one command per part)"
                           if name == "all" else f"run {name} (see the module docstring)")
        s.add_argument("--data", type=Path, default=DEFAULT_STAGE, help="what `stage` wrote")
        s.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else artifacts/gpu-suite)")
        s.add_argument("--work", type=Path, default=None, help="scratch folder (default /tmp/gpu-suite)")
        s.add_argument("--time-limit", type=float, default=570.0, help="seconds for the part (default 570)")
        s.add_argument("--dry-run", action="store_true", help="the CPU at tiny sizes on `stage --dry-run` data")
        s.add_argument("--in-process", action="store_true",
                       help="dry runs: call the scripts in this interpreter (the test suite's fast smoke run)")
        s.set_defaults(part=name)
    s = sub.add_parser("env", help="(internal) environment check")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--json", default=None)
    s = sub.add_parser("profile", help="(internal) torch.profiler breakdown of the fast-path step")
    s.add_argument("--device", default="auto")
    s.add_argument("--model", default="alexnet")
    s.add_argument("--model-options", default="{}")
    s.add_argument("--num-classes", type=int, default=1000)
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--prepared-size", type=int, default=256, help="side of the uint8 batch copied to the device")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--top", type=int, default=15)
    s.add_argument("--no-compiled", dest="compiled", action="store_false",
                   help="skip the compiled step's kernels (its compilation takes ~30 s on the GPU)")
    s.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (dry runs: aot_eager, which traces but generates no code)")
    s.add_argument("--json", default=None)
    s.add_argument("--table", default=None)
    s = sub.add_parser("report", help="markdown tables from the parts' JSON files (or folders holding them)")
    s.add_argument("paths", nargs="+")
    s.add_argument("--write", default=None, help="also write the markdown to this file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "stage":
        return cmd_stage(args)
    if args.command == "env":
        return cmd_env(args)
    if args.command == "profile":
        return cmd_profile(args)
    if args.command == "report":
        return cmd_report(args)
    return cmd_part(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))  # `stage` and `profile` import the project
    raise SystemExit(main())
