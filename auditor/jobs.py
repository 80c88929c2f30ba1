"""Background jobs: long work (a population of models plus a learned editor for a user's model) in a
process of its own, so that the dashboard stays responsive and other sessions are not blocked.

A job is a folder under `jobs_dir()` (`$AUDITOR_JOB_DIR`, default `~/.cache/auditor/jobs`) holding
`job.json` (what to run), `status.json` (state, fraction done, message, result or error; rewritten
whole by the job as it goes) and `log.txt` (its output). The job runs `python -m auditor.jobs FOLDER`
in a new process group at a lower priority (`nice`), with one torch thread per process; cancelling
ends the whole group (the job and the workers it started).

    >>> from auditor.jobs import start_job
    >>> job = start_job("train-editor", {"task": "user-1a2b3c4d5e6f", "requirement": "demographic_parity"})
    >>> job.status()["state"], job.status()["fraction"]      # "running", 0.42
    >>> job.cancel()                                           # or job.wait() until done

States: "running", "done" (with `result`), "failed" (with `error`, one line), "cancelled".
Kinds (`KINDS`): "train-editor" builds the missing members of a population and trains an editor
on it (`train_editor_job`).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .atomic import replacing
from .errors import AuditorError, one_line

FINAL = ("done", "failed", "cancelled")
_PROCS: dict[str, subprocess.Popen] = {}  # jobs this process started (polled, so they are reaped)


def jobs_dir() -> Path:
    return Path(os.environ.get("AUDITOR_JOB_DIR") or Path.home() / ".cache" / "auditor" / "jobs")


def _write(path: Path, payload: dict) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(payload, sort_keys=True))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


class Job:
    """A background job (its folder); `status()` reads what the job last wrote."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.id = self.folder.name

    @property
    def spec(self) -> dict:
        return _read(self.folder / "job.json")

    def status(self) -> dict:
        """{"id", "kind", "state", "fraction", "message", "result", "error", "started", "updated", "seconds"}."""
        st = {"state": "running", "fraction": 0.0, "message": "starting", **_read(self.folder / "status.json")}
        proc = _PROCS.get(self.id)
        running = proc.poll() is None if proc is not None else _alive(st.get("pid"))
        if st["state"] not in FINAL and not running and (proc is not None or st.get("pid")):
            cancelled = (self.folder / "cancel").exists()
            st = {**st, "state": "cancelled" if cancelled else "failed",
                  **({} if cancelled else {"error": f"the job ended without a result; see {self.folder / 'log.txt'}"})}
            _write(self.folder / "status.json", st)
        spec = self.spec
        st.update(id=self.id, kind=spec.get("kind"), params=spec.get("params", {}))
        st["seconds"] = round((st.get("updated") or time.time()) - spec.get("created", time.time()), 1)
        return st

    @property
    def done(self) -> bool:
        return self.status()["state"] in FINAL

    def cancel(self) -> dict:
        """End the job and every process it started (its process group); its status becomes "cancelled"."""
        (self.folder / "cancel").touch()
        st = _read(self.folder / "status.json")
        pid = st.get("pid") or (_PROCS[self.id].pid if self.id in _PROCS else None)
        if st.get("state") not in FINAL and pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            proc = _PROCS.get(self.id)
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            _write(self.folder / "status.json", {**st, "state": "cancelled", "message": "cancelled",
                                                 "updated": time.time()})
        return self.status()

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict:
        """Block until the job ends (or `timeout` seconds pass); its status."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st["state"] in FINAL or (end is not None and time.monotonic() > end):
                return st
            time.sleep(poll)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / "log.txt").read_text(errors="replace").splitlines()[-lines:])
        return ""


KEEP_DAYS = 7.0  # finished jobs older than this are removed when a new job starts


def prune_jobs(keep_days: float = KEEP_DAYS) -> list[str]:
    """Remove the folders of jobs that ended more than `keep_days` ago (running ones stay); their ids."""
    import shutil

    cutoff, removed = time.time() - keep_days * 86400, []
    for job in list_jobs():
        st = job.status()
        if st["state"] in FINAL and (st.get("updated") or 0) < cutoff:
            shutil.rmtree(job.folder, ignore_errors=True)
            removed.append(job.id)
    return removed


def start_job(kind: str, params: dict, *, niceness: int = 10) -> Job:
    """Start `kind` with `params` (JSON) in a new process group; returns at once. Jobs that ended
    more than `KEEP_DAYS` ago are removed first."""
    if kind not in KINDS:
        raise AuditorError(f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
    prune_jobs()
    job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder = jobs_dir() / job_id
    folder.mkdir(parents=True)
    _write(folder / "job.json", {"kind": kind, "params": params, "created": time.time(), "niceness": niceness})
    _write(folder / "status.json", {"state": "running", "fraction": 0.0, "message": "starting",
                                    "updated": time.time()})
    from .child import child_env, python_command

    env = child_env()  # the package importable from any folder, nothing imported from the cwd
    with open(folder / "log.txt", "wb") as log:
        proc = subprocess.Popen(python_command("import runpy; runpy.run_module('auditor.jobs', run_name='__main__')",
                                               str(folder.resolve())), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, close_fds=True)
    _PROCS[job_id] = proc
    st = _read(folder / "status.json")
    if "pid" not in st:
        _write(folder / "status.json", {**st, "pid": proc.pid})
    return Job(folder)


def get_job(job_id: str) -> Job:
    folder = jobs_dir() / job_id
    if not (folder / "job.json").is_file() or Path(job_id).name != job_id:
        raise AuditorError(f"no job {job_id!r} in {jobs_dir()}")
    return Job(folder)


def list_jobs() -> list[Job]:
    """Every job under `jobs_dir()`, newest first."""
    found = [Job(p.parent) for p in jobs_dir().glob("*/job.json")]
    return sorted(found, key=lambda j: j.spec.get("created", 0), reverse=True)


# ------------------------------------------------------------------------------------------------
# what jobs run

def editor_output_path(task: str, requirement: str) -> Path:
    """Where an editor trained for `task` is written so that it is found: the first folder of
    `$AUDITOR_EDITOR_DIR`, else `~/.auditor/editors` (both on the editor search path)."""
    from .editors.metanet.runtime import requirement_kind
    from .editors.weights import user_editor_dir

    first = next((p for p in os.environ.get("AUDITOR_EDITOR_DIR", "").split(os.pathsep) if p), None)
    folder = Path(first).expanduser() if first else user_editor_dir()
    return folder / f"metanet_{task}_{requirement_kind(requirement).stem}.safetensors"


def train_editor_job(params: dict, callback: Callable[[float, str], None],
                     should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Build the missing members of population `params["task"]` (in `workers` processes) and train an
    editor for `params["requirement"]` on it. Optional params: `n_models` (the population's size),
    `workers`, `minutes` (budget of the training), `patience`, `out`, and any `TrainSettings` field
    (`steps`, `models_per_step`, `val_limit`, ...). Returns {"editor", "task", "requirement",
    "training", "validation"}."""
    from . import zoo
    from .editors.metanet.train import TrainSettings, train_editor

    task = params["task"]
    kind_metric = params.get("requirement", "demographic_parity")
    n_models = int(params.get("n_models") or zoo.default_size(task))
    fields = {f for f in TrainSettings.__dataclass_fields__ if f not in ("task", "requirement", "n_models")}
    settings = TrainSettings(task=task, requirement=kind_metric, n_models=n_models,
                             **{k: v for k, v in params.items() if k in fields})
    out = Path(params.get("out") or editor_output_path(task, kind_metric))
    workers = max(1, int(params.get("workers", 1)))
    share = 0.4  # of the bar: building the population
    for split, limit, lo, hi in (("train", settings.train_limit, 0.0, 0.9), ("val", settings.val_limit, 0.9, 1.0)):
        zoo.build_population(task, n_models, workers=workers, splits=(split,), limit=limit,
                             callback=lambda f, m, lo=lo, hi=hi: callback(share * (lo + (hi - lo) * f),
                                                                          f"building the population: {m}"))
    callback(share, "training the editor")
    info = train_editor(settings, out=out, callback=lambda f, m: callback(share + (1 - share) * f, m),
                        minutes=params.get("minutes"), patience=params.get("patience"), should_stop=should_stop)
    return {"editor": str(out), "task": task, "requirement": info["requirement"],
            "training": {k: info["training"][k] for k in ("steps_done", "seconds", "stopped", "best_step")},
            "validation": info.get("validation", [])}


KINDS: dict[str, Callable[..., dict]] = {"train-editor": train_editor_job}


def why_no_editor_training(bundle, data, requirement: str) -> str | None:
    """None when a learned editor for `requirement` can be trained for `bundle` on `data`, else why not
    (and what to do)."""
    from .editors.metanet.runtime import requirement_kind
    from .zoo import hidden_widths

    kind = requirement_kind(requirement)
    if data.kind != "tabular" or len(data.class_names) != 2:
        return (f"learned editors are trained for binary classifiers on tabular data; {data.name!r} is "
                f"{data.kind} data with {len(data.class_names)} classes")
    try:
        hidden_widths(bundle.model)
    except AuditorError as exc:
        return str(exc)
    from .models.custom import reads_single_logit

    if kind.metric == "sparsity" and reads_single_logit(bundle.model):
        from .editors.metanet.editors import ONE_LOGIT_PRUNING

        return ONE_LOGIT_PRUNING
    if kind.mode == "residual" and not data.protected:
        return (f"a {kind.metric} editor needs a protected attribute in the data: load the CSV again with one "
                "(it is read only while training and calibrating, never by the edited model)")
    return None


def train_editor_for(bundle, data, requirement: str, *, n_models: int | None = None, minutes: float = 10.0,
                     workers: int = 1, **settings) -> Job:
    """Register the population of models like `bundle` on the user's `data` (`zoo.register_user_population`)
    and start a background job that builds it and trains an editor for `requirement`; the editor is
    written where it is found for this model's family. `settings`: `TrainSettings` fields (steps, ...)."""
    from .editors.metanet.runtime import requirement_kind
    from .zoo import register_user_population

    reason = why_no_editor_training(bundle, data, requirement)
    if reason:
        raise AuditorError(reason)
    task = register_user_population(bundle, data, n_models)
    return start_job("train-editor", {"task": task, "requirement": requirement_kind(requirement).metric,
                                      "n_models": n_models, "minutes": minutes, "workers": workers,
                                      "patience": settings.pop("patience", 3), **settings})


def _run(folder: Path) -> int:
    """The job process: run the job, writing its status as it goes."""
    spec = _read(folder / "job.json")
    status_path = folder / "status.json"
    base = {"pid": os.getpid(), "started": time.time()}
    with contextlib.suppress(OSError):
        os.nice(int(spec.get("niceness", 10)))
    import torch

    torch.set_num_threads(1)
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.time()
        if now - last[0] >= 0.5 or fraction >= 1:
            last[0] = now
            _write(status_path, {**base, "state": "running", "fraction": round(float(fraction), 4),
                                 "message": str(message), "updated": now})

    progress(0.0, "started")
    try:
        result = KINDS[spec["kind"]](spec["params"], progress, should_stop=lambda: (folder / "cancel").exists())
    except Exception as exc:  # noqa: BLE001 (reported in the status, never lost)
        import traceback

        traceback.print_exc()
        what = str(exc) if isinstance(exc, AuditorError) else f"{type(exc).__name__}: {exc}"
        _write(status_path, {**base, "state": "failed", "fraction": 0.0, "error": one_line(what, 400),
                             "message": "failed", "updated": time.time()})
        return 1
    state = "cancelled" if (folder / "cancel").exists() else "done"
    _write(status_path, {**base, "state": state, "fraction": 1.0, "message": state, "result": result,
                         "updated": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
