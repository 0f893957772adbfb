"""Cross-checker, part 5: ``--isolate``: cases run in a child process.

The parent starts one worker (``python -c "...worker()"``), sends it the
configuration as JSON on stdin and reads, on the worker's own protocol
stream (the original stdout; the user's prints go to stderr), one
``begin NAME`` line before and one ``result JSON`` line after each case.
When the worker dies mid-case (segfault, abort, ``os._exit``) or a case
runs past ``case_timeout`` seconds, that case is reported as failed, a
fresh worker is started for the rest, and the run goes on.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading

from ._crosscheck_compare import CaseResult

SETUP_TIMEOUT = 300.0          # importing the framework and the user's module


def _worker_env():
    env = dict(os.environ)
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _crash_message(rc, stderr_text, started=True):
    last = next((ln.strip() for ln in reversed(stderr_text.splitlines()) if ln.strip()), "")
    what = "crashed" if started else "the worker failed to start"
    how = (f"{what}: killed by {_signal_name(rc)} (exit {128 - rc})" if rc < 0
           else f"{what}: the process exited with status {rc}" + (" mid-case" if started else ""))
    return (how + (f"; last stderr line: {last}" if last else ""))[:300]


def _reader(stream, q):
    for line in stream:
        q.put(line.rstrip("\n"))
    q.put(None)


def run_isolated(config, names, case_timeout, emit):
    """Run the cases ``names`` in workers; call ``emit(CaseResult)`` as each completes."""
    todo = list(names)
    while todo:
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from refimpl._crosscheck_isolate import worker; worker()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                env=_worker_env())
            proc.stdin.write(json.dumps({**config, "names": todo}))
            proc.stdin.close()
            q = queue.Queue()
            threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
            current, ready = None, False
            while todo:
                try:
                    line = q.get(timeout=case_timeout if ready else SETUP_TIMEOUT + case_timeout)
                except queue.Empty:
                    proc.kill()
                    proc.wait()
                    name = current or todo[0]
                    emit(CaseResult(name, ok=False, reasons=["timeout"],
                                    error=f"timed out after {case_timeout:g} s (--case-timeout)"))
                    todo.remove(name)
                    break
                if line is None:                       # the worker is gone
                    rc = proc.wait()
                    err.seek(0)
                    text = err.read()
                    if not ready:                      # died before its first case
                        msg = _crash_message(rc, text, started=False)
                        for name in todo:
                            emit(CaseResult(name, ok=False, reasons=["crash"], error=msg))
                        todo = []
                        break
                    name = current or todo[0]
                    emit(CaseResult(name, ok=False, reasons=["crash"], error=_crash_message(rc, text)))
                    todo.remove(name)
                    break
                kind, _, payload = line.partition(" ")
                if kind == "ready":
                    ready = True
                elif kind == "begin":
                    current = payload
                elif kind == "result":
                    res = CaseResult.from_dict(json.loads(payload))
                    emit(res)
                    todo.remove(res.name)
                    current = None
            if proc.poll() is None:
                proc.wait()
            err.seek(0)
            sys.stderr.write(err.read())               # the user's own output, warnings


def worker():
    """The child: read the configuration, run the cases, write the protocol lines."""
    import numpy as np

    from . import _crosscheck_compare as C
    from . import _crosscheck_load as L
    from . import _crosscheck_report as R
    from . import golden
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                      # the user's prints go to stderr
    sys.stdout = sys.stderr
    cfg = json.loads(sys.stdin.read())
    f = L.load_callable(cfg["impl"])
    adapter = L.make_adapter(cfg["framework"], cfg["vjp"], cfg["x64"], cfg["jit"])
    tol = C.Tolerances(**cfg["tol"])
    by_name = {c.name: c for c in golden.read_golden(cfg["golden_dir"], cfg["mapping"])}
    proto.write("ready\n")
    for name in cfg["names"]:
        proto.write(f"begin {name}\n")
        with np.errstate(all="ignore"):
            res = C.check_case(by_name[name], f, adapter, tol,
                               hint=lambda e: R.framework_hint(e, cfg["framework"]))
        proto.write("result " + json.dumps(res.to_dict()) + "\n")
    proto.close()
