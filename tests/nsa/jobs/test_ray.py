"""The Ray executor with real Ray: a local instance started here (2 CPUs), a `ray start --head` cluster in a
subprocess that the test kills, and no cluster at all. Every instance is stopped afterwards and no raylet is
left behind (checked with `ps`)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nsa.errors import NSAError
from nsa.jobs import runs
from nsa.jobs.executors import RayExecutor, cluster_status, get_executor, resolve_address
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa.study import load_study, runner
from tests.conftest import ROOT
from tests.pages.helpers import no_errors, page

DEMO_STUDY = """\
name: ray-demo
base:
  model: demo
  prune: {method: wanda, sparsity: 0.5}
  calibration: {source: demo-generic, nsamples: 4, seqlen: 64, seed: 0}
  evaluate: {tasks: [demo-reviews], limit: 16}
axes:
  method: [magnitude, wanda]
  sparsity: [0.5, 0.7]
"""


def _ray_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance in this process: 2 CPUs, no dashboard; shut down after the module's tests."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    session = ray._private.worker._global_node.get_session_dir_path()
    yield ray
    ray.shutdown()
    time.sleep(1.0)
    assert _ray_processes(session) == []  # no raylet, GCS or worker left behind


def _serve(executor, store, only, once=True):
    """Run the Ray worker loop in a thread (this test process is its driver); returns (thread, outcome)."""
    outcome = {}

    def target():
        try:
            outcome["ran"] = executor.serve(store, once=once, only=set(only), log=lambda m: None)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _results(plan) -> dict:
    """{run id: (sha256 of the mask tensors' bytes, accuracies and flips per task)} from the run folders. The
    masks file's own bytes are not compared: safetensors writes its two metadata keys in a per-process
    random order (a Rust HashMap), so the file differs between any two processes, the local worker's included."""
    out = {}
    for run in plan.runs:
        entry = runs.run_entry(run.run_id)
        assert entry.problems(deep=True) == [], run.run_id
        comparison = json.loads(entry.path("eval/comparison.json").read_text())
        accuracies = {task: (t["dense_acc"], t["pruned_acc"], t["lost"], t["gained"])
                      for task, t in comparison["tasks"].items()}
        masks = load_file(entry.path("masks.safetensors"))
        digest = hashlib.sha256(b"".join(k.encode() + masks[k].numpy().tobytes() for k in sorted(masks)))
        out[run.run_id] = (digest.hexdigest(), accuracies)
    return out


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


# --- no cluster ---------------------------------------------------------------------------------------------
def test_unreachable_cluster_is_named_in_seconds(cache, tmp_path, monkeypatch):
    port = _free_port()  # nothing listens there
    start = time.time()
    with pytest.raises(NSAError, match=f"no Ray cluster reachable at 127.0.0.1:{port}"):
        RayExecutor(address=f"127.0.0.1:{port}").check()
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where Ray records the cluster `ray start` started: none
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(NSAError, match="no Ray cluster found for address 'auto'"):
        resolve_address("auto")
    assert resolve_address(None) is None  # no address, no cluster: a local instance for the run
    status = cluster_status(f"127.0.0.1:{port}", max_age_s=0)
    assert not status.reachable and f"127.0.0.1:{port}" in status.message and status.nodes == []
    assert time.time() - start < 10
    with pytest.raises(NSAError, match="--address: only with --executor ray"):
        get_executor("local", address="auto")

    study = tmp_path / "study.yaml"
    study.write_text(DEMO_STUDY)
    out = subprocess.run([sys.executable, "-m", "nsa", "study", str(study), "--executor", "ray", "--address",
                          f"127.0.0.1:{port}"], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and f"no Ray cluster reachable at 127.0.0.1:{port}" in out.stderr, out.stderr
    assert JobStore().list() == []  # refused before anything was queued


def test_an_entry_sent_between_machines_is_checked_file_by_file(cache, tmp_path):
    """What a task sends back is installed only when every file matches the sender's manifest; else nothing
    changes and the error names the file."""
    from nsa.artifacts import Entry

    source = Entry(tmp_path / "made-elsewhere" / "abc", "run")
    with source.build() as out:
        (out / "eval").mkdir()
        (out / "eval" / "summary.json").write_text('{"acc": 0.5}')
        (out / "masks.safetensors").write_bytes(b"\x00\x01" * 100)
    data = source.export()
    target = Entry(tmp_path / "cache" / "abc", "run")
    for damage, says in ((lambda d: d["files"].__setitem__("masks.safetensors", b"\x01\x01" + b"\x00\x01" * 99),
                          "masks.safetensors does not match"),
                         (lambda d: d["files"].pop("eval/summary.json"), "differ from its manifest"),
                         (lambda d: d["files"].__setitem__("../outside", b"x"), "differ from its manifest")):
        bad = {"manifest": data["manifest"], "files": dict(data["files"])}
        damage(bad)
        with pytest.raises(NSAError, match=says):
            target.receive(bad)
        assert not target.folder.exists() and _hidden(target.folder.parent) == []
    target.receive(data)
    assert target.problems(deep=True) == [] and target.manifest() == source.manifest()


# --- a local instance ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_study_through_ray_matches_the_local_executor(cache, tmp_path, monkeypatch, local_ray):
    path = tmp_path / "study.yaml"
    path.write_text(DEMO_STUDY)
    plan = runner.plan(load_study(path))
    assert len(plan.runs) == 4
    runner.submit(plan, start_worker=False)
    assert set(runner.run_here(plan).values()) == {"done"}  # the local executor's pipeline, in this process
    local = _results(plan)

    monkeypatch.setenv("NSA_CACHE_DIR", str(tmp_path / "ray-cache"))  # a fresh cache: nothing to reuse
    node = tmp_path / "node"
    plan = runner.plan(load_study(path))
    assert not plan.finished
    executor = RayExecutor(node_cache=str(node))
    ids = runner.submit(plan, start_worker=False, executor=executor)
    store = JobStore()
    texts = tmp_path / "two_lines.txt"  # and a job that raises on its node: failed with its message, as locally
    texts.write_text("a short calibration text\nanother one\n")
    bad = submit({"model": "demo", "prune": {"method": "wanda", "sparsity": 0.5},
                  "calibration": {"source": "mine", "path": str(texts), "nsamples": 2, "seqlen": 512}},
                 store, start_worker=False, executor=executor).run_id
    thread, outcome = _serve(executor, store, [*ids, bad])
    thread.join(600)
    assert outcome.get("ran") == 5, (outcome, [(j.status, j.stage, j.message) for j in store.list()])
    jobs = [store.get(i) for i in ids]
    not_done = [f"{j.id}: {j.status}: {j.message} | {j.error}" for j in jobs if j.status != "done"]
    assert not not_done, "\n".join(not_done)  # whole, so a failure on a loaded machine says what happened
    failed = store.get(bad)
    assert failed.status == "failed" and failed.message.startswith("failed during calibration:"), failed
    assert "windows of seqlen=512" in failed.error and "Traceback" in failed.traceback
    assert _results(plan) == local  # masks bit for bit, the same accuracies
    placements = store.placements()
    assert all(placements[i]["executor"] == "ray" and placements[i]["host"] == socket.gethostname() for i in ids)
    assert _hidden(runs.runs_dir()) == [] and not any((node / "runs").iterdir())  # the nodes keep no runs
    index = json.loads((tmp_path / "ray-cache" / "ray" / "entries.json").read_text())
    assert any(k.startswith("dense-eval/") for k in index["demo"])  # shared entries came back, for the next tasks


@pytest.mark.slow
def test_killed_ray_worker_is_retried_and_cancel_stops_a_job(cache, long_spec, tmp_path, wait, local_ray):
    """Two jobs at once, the nodes writing straight into the (shared) cache: the Ray worker of one is SIGKILLed
    mid-pruning (Ray runs it again: done, one run folder, nothing half-written left); the other is cancelled
    mid-pruning (stopped within seconds)."""
    store = JobStore()
    executor = RayExecutor(shared_cache=True)
    killed = submit(long_spec, store, start_worker=False, executor=executor).run_id
    cancelled = submit(dict(long_spec, prune={"method": "sparsegpt", "sparsity": 0.6}), store, start_worker=False,
                       executor=executor).run_id
    thread, outcome = _serve(executor, store, [killed, cancelled])

    def pruning(job_id):
        job = store.get(job_id)
        return job.status == "running" and job.stage == "prune" and job.progress > 0.1 and store.placement(job_id)

    first = wait(lambda: pruning(killed), 300, "the first job to be pruning")
    os.kill(first["pid"], signal.SIGKILL)
    wait(lambda: pruning(cancelled), 300, "the second job to be pruning")
    asked = time.time()
    store.cancel(cancelled)
    job = wait(lambda: (j := store.get(cancelled)).status != "running" and j, 15, "the cancel")
    assert job.status == "cancelled" and "cancelled during prune" in job.message and time.time() - asked < 10

    thread.join(240)
    assert outcome.get("ran") == 2, outcome
    job = store.get(killed)
    assert job.status == "done", (job.message, job.error, job.traceback)
    assert store.placement(killed)["attempt"] == 2 and store.placement(killed)["pid"] != first["pid"]
    assert runs.verify_run(killed) == [] and not runs.run_dir(cancelled).exists()
    assert [j.id for j in store.list()] and len(store.list()) == 2  # one row per job, one run
    assert [p.name for p in runs.runs_dir().iterdir()] == [killed]  # no hidden half-built folder either
    assert "ray" not in {p.name for p in cache.iterdir()}  # shared mode: no entries travel, none are indexed


def test_cluster_status_of_the_local_instance(cache, local_ray):
    """`cluster_status` asks the GCS without joining: nodes, total and free resources."""
    address = local_ray.get_runtime_context().gcs_address
    status = cluster_status(address, max_age_s=0)
    assert status.reachable and status.address == address, status
    assert status.total["CPU"] == 2 and len(status.nodes) == 1 and status.nodes[0].alive
    assert "1 node, " in status.message and "of 2 CPUs" in status.message


# --- a cluster that goes away ---------------------------------------------------------------------------------
@pytest.fixture
def head(tmp_path):
    """`ray start --head --block` in its own process group (so the test can kill the whole cluster)."""
    temp = tempfile.mkdtemp(prefix="nsa-ray-")  # short: Ray's unix sockets live there
    port = _free_port()
    proc = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    end = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.time() < end and proc.poll() is None, "ray start --head did not come up"
            time.sleep(0.2)
    cluster = {"address": f"127.0.0.1:{port}", "temp": temp}

    def stop():
        with_pid = proc.poll() is None
        if with_pid:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        time.sleep(0.5)
        return with_pid

    cluster["stop"] = stop
    yield cluster
    stop()
    assert _ray_processes(temp) == []
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_cluster_going_away_mid_study_then_resume_locally(cache, llama_dir, tmp_path, head, wait):
    path = tmp_path / "study.yaml"
    path.write_text(f"""\
name: away
base:
  model: {llama_dir}
  prune: {{method: magnitude, sparsity: 0.5}}
  evaluate: {{tasks: [sst2], limit: 16}}
axes:
  sparsity: [0.3, 0.4, 0.5, 0.6, 0.7]
""")  # runs of 2-3 s, two at a time: when the first is done, at least three are not
    plan = runner.plan(load_study(path))
    study = subprocess.Popen([sys.executable, "-m", "nsa", "study", str(path), "--executor", "ray", "--address",
                              head["address"], "--poll", "0.2", "--node-cache", str(tmp_path / "node")],
                             cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    store = JobStore()
    wait(lambda: any((j := store.get(r.run_id)) is not None and j.status == "done" for r in plan.runs), 240,
         "a first run of the study to finish on the cluster")
    assert head["stop"]()  # the whole cluster goes away
    out, err = study.communicate(timeout=120)
    finished = {r.run_id for r in plan.runs if runs.is_complete(r.run_id)}
    assert study.returncode == 3, err[-3000:]
    assert 1 <= len(finished) < len(plan.runs)
    assert f"{len(finished)} of {len(plan.runs)} runs finished" in err and "queued" in err, err[-3000:]
    assert "no worker is running" in err and "run the same command again to resume".lower() in err.lower()
    assert {j.status for j in store.list()} <= {"done", "queued"}  # nothing is left "running" for a dead cluster
    assert "went away" in (Path(cache) / "logs" / "worker.log").read_text() or any(
        "re-queued" in j.message for j in store.list("queued"))
    assert _hidden(runs.runs_dir()) == []
    stamps = {i: runs.run_entry(i).manifest()["created"] for i in finished}

    plan = runner.plan(load_study(path))  # resume with the local executor: only the missing runs run
    assert plan.finished == finished
    runner.submit(plan, start_worker=False)
    assert set(runner.run_here(plan).values()) == {"done"}
    assert all(runs.is_complete(r.run_id) for r in plan.runs)
    assert {i: runs.run_entry(i).manifest()["created"] for i in finished} == stamps  # not recomputed


def test_run_and_study_pages_offer_a_reachable_cluster(cache, local_ray, monkeypatch):
    """With RAY_ADDRESS naming a live cluster, the Run and Study pages offer it beside this machine and show its
    free resources; choosing it submits through the Ray executor (the queue records where jobs run)."""
    address = local_ray.get_runtime_context().gcs_address
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("NSA_NO_WORKER", "1")  # queue only: no worker is started by the page
    at = page("pages/run.py")
    no_errors(at)
    radio = at.radio(key="executor")
    assert radio.options == ["this machine", f"Ray cluster at {address}"]
    assert any("Ray cluster: 1 node, " in c.value and "of 2 CPUs" in c.value for c in at.caption)
    study = page("pages/study.py", study="demo")
    no_errors(study)
    assert study.radio(key="study-executor").options[1] == f"Ray cluster at {address}"
