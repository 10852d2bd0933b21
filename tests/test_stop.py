"""`biasloop stop` and doctor's lock lines: only this checkout's processes, found in /proc by working
directory and arguments; a lock a live process holds is named with its PID, never to be deleted.

The finding is tested on fake /proc trees (tmp folders); one test starts real processes (a sleeping
``python -m stages.sleeper`` inside a tmp checkout and one inside another) and stops the checkout's: only
the inside one ends. Processes the tests start are ended by their PID only.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biasloop.cli.doctor import Report, check_running
from biasloop.core.processes import checkout_processes, kind_of, lock_holders, stop

# ------------------------------------------------------------------------------------ fake /proc


def _fake(proc: Path, pid: int, cmdline: list[str], cwd: Path | str, ppid: int = 1, start: int = 1000) -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True)
    (folder / "cmdline").write_bytes(b"\0".join(part.encode() for part in cmdline) + b"\0")
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 10  # state, ppid, ..., field 22: start time
    (folder / "stat").write_text(f"{pid} ({os.path.basename(cmdline[0])[:15]}) {' '.join(fields)}\n")
    os.symlink(str(cwd), folder / "cwd")


@pytest.fixture()
def machine(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fake /proc with two checkouts' pipelines: ``/work/a`` (ours) and ``/work/ab`` (a name that
    starts the same), plus a shell and an editor in ours."""
    ours, theirs, proc = tmp_path / "work" / "a", tmp_path / "work" / "ab", tmp_path / "proc"
    for folder in (ours / ".dvc" / "tmp" / "exps" / "tmpx1", theirs, tmp_path / "elsewhere"):
        folder.mkdir(parents=True)
    py = str(ours / ".venv" / "bin" / "python")
    _fake(proc, 100, [py, str(ours / ".venv/bin/dvc"), "repro"], ours)
    _fake(proc, 101, [py, "-m", "stages.retrain", "--params", "params.yaml"], ours, ppid=100)
    _fake(proc, 102, [py, "-m", "stages.retrain", "--params", "params.yaml"], ours, ppid=101)  # a forked worker
    _fake(proc, 103, [py, "-c", "from multiprocessing.spawn import spawn_main"], ours, ppid=101)
    _fake(proc, 110, ["/usr/bin/python3", "-m", "dvc", "exp", "queue-worker", "dvc-exp-worker-1"], ours)
    _fake(proc, 111, [py, "-m", "stages.corpus"], ours / ".dvc" / "tmp" / "exps" / "tmpx1", ppid=110)
    _fake(
        proc,
        120,
        [py, "-m", "biasloop.core.tracking", "--spool", str(ours / ".mlflow-spool"), "--linger", "20"],
        tmp_path / "elsewhere",
    )
    _fake(proc, 130, ["/bin/bash"], ours)  # the user's shell: never stopped
    _fake(proc, 131, ["vim", "params.yaml"], ours)
    _fake(proc, 200, ["/usr/bin/python3", "/other/.venv/bin/dvc", "repro"], theirs)
    _fake(proc, 201, ["python", "-m", "stages.retrain"], theirs, ppid=200)
    _fake(proc, 202, [py, "-m", "stages.retrain"], theirs)  # runs our python, works in theirs: theirs
    _fake(proc, 203, ["python", "-m", "biasloop.core.tracking", "--spool", str(theirs / ".mlflow-spool")], theirs)
    return ours, theirs, proc


def test_kinds_from_command_lines() -> None:
    assert kind_of(("/x/.venv/bin/python", "/x/.venv/bin/dvc", "exp", "run")) == "dvc"
    assert kind_of(("dvc", "repro")) == "dvc"
    assert kind_of(("python3", "-m", "dvc", "exp", "queue-worker", "w1")) == "queue worker"
    assert kind_of(("/x/.venv/bin/python", "/env/site-packages/dvc/__main__.py", "daemon", "-q", "updater")) == "dvc"
    assert kind_of(("python3.11", "-u", "-m", "stages.generate", "--generation", "1")) == "stage"
    assert kind_of(("python", "-m", "biasloop.core.tracking", "--spool", "/x/.mlflow-spool")) == "mlflow logger"
    for other in (
        ("bash",),
        ("vim", "dvc.yaml"),
        ("python", "stages.py"),
        ("python", "-c", "import dvc"),
        ("grep", "-m", "stages.corpus"),
    ):
        assert kind_of(other) is None


def test_finds_this_checkouts_processes_only(machine: tuple[Path, Path, Path]) -> None:
    ours, theirs, proc = machine
    found = {p.pid: p for p in checkout_processes(ours, proc=proc)}
    assert set(found) == {100, 101, 102, 103, 110, 111, 120}
    assert found[100].kind == "dvc" and found[110].kind == "queue worker" and found[120].kind == "mlflow logger"
    assert found[101].kind == found[111].kind == "stage" and found[103].kind == "child"
    assert found[111].why == "in a DVC queue copy" and found[120].why == "its arguments name the checkout"
    assert [p.kind for p in checkout_processes(ours, proc=proc)] == [  # the order stop() signals them in
        "queue worker",
        "dvc",
        "stage",
        "stage",
        "stage",
        "mlflow logger",
        "child",
    ]
    assert {p.pid for p in checkout_processes(theirs, proc=proc)} == {200, 201, 202, 203}
    assert checkout_processes(ours.parent, proc=proc) != []  # a folder above both holds both
    assert checkout_processes(ours / "data", proc=proc) == []


def test_an_unreadable_working_directory_is_not_ours(tmp_path: Path) -> None:
    proc, ours = tmp_path / "proc", tmp_path / "a"
    ours.mkdir()
    _fake(proc, 300, ["python", "-m", "stages.corpus"], ours)
    os.unlink(proc / "300" / "cwd")  # another user's process: /proc hides its cwd
    assert checkout_processes(ours, proc=proc) == []


def test_lock_holders_from_proc_locks(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text(" 4242\n")
    st = os.stat(lock)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    other = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino + 1}"
    (tmp_path / "locks").write_text(
        f"1: FLOCK  ADVISORY  WRITE 4242 {dev} 0 EOF\n"
        f"1: -> FLOCK  ADVISORY  WRITE 4343 {dev} 0 EOF\n"  # a waiter, not a holder
        f"2: POSIX  ADVISORY  WRITE 77 {other} 0 EOF\n"
    )  # another file
    assert lock_holders(lock, tmp_path) == [4242]
    assert lock_holders(tmp_path / "missing", tmp_path) == []
    assert lock_holders(lock, tmp_path / "nowhere") is None


# ------------------------------------------------------------------------------------ real processes

SLEEPER = "import time, sys\nprint('ready', flush=True)\ntime.sleep(600)\n"


def _checkout(folder: Path) -> Path:
    (folder / "stages").mkdir(parents=True)
    (folder / "dvc.yaml").write_text("stages: {}\n")
    (folder / "stages" / "__init__.py").write_text("")
    (folder / "stages" / "sleeper.py").write_text(SLEEPER)
    return folder.resolve()


def _start(cwd: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "stages.sleeper"], cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_stop_ends_only_the_checkouts_process(tmp_path: Path) -> None:
    inside, outside = _checkout(tmp_path / "a"), _checkout(tmp_path / "ab")
    started = [_start(inside), _start(outside)]
    try:
        found = checkout_processes(inside)
        assert [p.pid for p in found] == [started[0].pid] and found[0].kind == "stage"
        said: list[str] = []
        stopped = stop(inside, timeout=5, say=said.append)
        assert [p.pid for p in stopped] == [started[0].pid] and "SIGTERM" in said[0]
        assert started[0].wait(timeout=10) == -signal.SIGTERM
        time.sleep(0.2)
        assert started[1].poll() is None  # the other checkout's stage still runs
        assert [p.pid for p in checkout_processes(outside)] == [started[1].pid]
    finally:
        for process in started:  # by PID, never by name
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def test_stop_sends_sigkill_after_the_timeout_and_the_command_lists_first(tmp_path: Path) -> None:
    inside = _checkout(tmp_path / "a")
    (inside / "stages" / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    stubborn = subprocess.Popen(
        [sys.executable, "-m", "stages.stubborn"], cwd=inside, stdout=subprocess.PIPE, text=True
    )
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        listed = subprocess.run(
            [sys.executable, "-m", "biasloop.cli", "stop", "--dry-run", "--root", str(inside)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            listed.returncode == 0
            and f"PID {stubborn.pid} (stage" in listed.stdout
            and "none signalled" in listed.stdout
        )
        assert stubborn.poll() is None
        ended = subprocess.run(
            [sys.executable, "-m", "biasloop.cli", "stop", "--timeout", "0.5", "--root", str(inside)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ended.returncode == 0, ended.stdout + ended.stderr
        assert f"SIGKILL PID {stubborn.pid}" in ended.stdout
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait(timeout=10)


def test_stop_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    """`--root /` (or the home folder) would take in every checkout's processes."""
    result = subprocess.run(
        [sys.executable, "-m", "biasloop.cli", "stop", "--dry-run", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "is not a DVC checkout" in result.stderr and "Traceback" not in result.stderr


def test_root_from_inside_a_queue_copy_is_the_checkout(tmp_path: Path) -> None:
    from biasloop.cli.stop import checkout_root

    copy = tmp_path / "a" / ".dvc" / "tmp" / "exps" / "tmpab12" / "artifacts"
    copy.mkdir(parents=True)
    assert checkout_root(copy) == (tmp_path / "a").resolve()


# ------------------------------------------------------------------------------------ doctor and locks


def test_doctor_names_the_live_lock_holder_and_never_advises_deleting(tmp_path: Path) -> None:
    """A stage-like process of the checkout holds .dvc/tmp/lock (flock, as dvc's zc.lockfile does) and is
    named in .dvc/tmp/rwlock: doctor names its PID and command and says to wait."""
    inside = _checkout(tmp_path / "a")
    tmp = inside / ".dvc" / "tmp"
    tmp.mkdir(parents=True)
    (inside / "stages" / "holder.py").write_text(
        "import fcntl, time\nhandle = open('.dvc/tmp/lock', 'a+')\nfcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('ready', flush=True)\ntime.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-m", "stages.holder"], cwd=inside, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        (tmp / "rwlock").write_text(
            json.dumps({"write": {str(inside / "artifacts"): {"pid": holder.pid, "cmd": "dvc repro"}}})
        )
        report = Report()
        running = check_running(report, inside)
        assert [p.pid for p in running] == [holder.pid]
        lines = {topic: (level, text) for level, topic, text in report.lines}
        assert lines["DVC lock"][0] == "info" and f"PID {holder.pid}" in lines["DVC lock"][1]
        assert "stages.holder" in lines["DVC lock"][1] and "wait" in lines["DVC lock"][1]
        assert f"PID {holder.pid}" in lines["DVC rwlock"][1] and "dvc repro" in lines["DVC rwlock"][1]
        assert f"PID {holder.pid}" in lines["running"][1] and "biasloop stop" in lines["running"][1]
        assert not any("rm " in text for _, _, text in report.lines) and report.problems == 0
    finally:
        holder.kill()
        holder.wait(timeout=10)
    after = Report()
    assert check_running(after, inside) == []
    lines = {topic: (level, text) for level, topic, text in after.lines}
    assert lines["DVC lock"][0] == "ok" and "nothing to remove" in lines["DVC lock"][1]
    assert lines["DVC rwlock"][0] == "ok" and "ended" in lines["DVC rwlock"][1]  # dvc drops dead PIDs itself


def test_doctor_advises_removing_a_recycled_rwlock_only_when_nothing_of_the_checkout_runs(tmp_path: Path) -> None:
    inside = _checkout(tmp_path / "a")
    (inside / ".dvc" / "tmp").mkdir(parents=True)
    # the rwlock names a live process that is not dvc (a recycled PID): this test's own process
    (inside / ".dvc" / "tmp" / "rwlock").write_text(
        json.dumps({"read": {"x": [{"pid": os.getpid(), "cmd": "dvc repro"}]}})
    )
    idle = Report()
    check_running(idle, inside)
    assert idle.problems == 1 and "rm " in idle.lines[-1][2]
    sleeper = _start(inside)
    try:
        busy = Report()
        check_running(busy, inside)
        assert busy.problems == 0 and not any("rm " in text for _, _, text in busy.lines)
        assert any(f"PID {sleeper.pid}" in text for _, _, text in busy.lines)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_flock_is_what_the_lock_check_reads(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert lock_holders(lock) == [os.getpid()]
    assert lock_holders(lock) == []


# ------------------------------------------------------------------------------------ a closed pipe


@pytest.mark.parametrize("argv", [["stop", "--dry-run"], ["--help"], ["generations", "--help"]])
def test_a_closed_stdout_is_quiet(tmp_path: Path, argv: list[str]) -> None:
    """`biasloop ... | head`: the reader went away before the output was written; no traceback."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a checkout for `stop`
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "biasloop.cli", *argv],
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == (0 if "--help" in argv else 141)  # argparse's help ignores a failed write


def test_piped_into_head(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    script = (
        f"'{sys.executable}' -m biasloop.cli stop --dry-run --root '{tmp_path}' | head -c 0; "
        f"'{sys.executable}' -m biasloop.cli --help | head -1"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("usage: biasloop") and result.stdout.count("\n") == 1
    assert result.stderr == "", result.stderr


def test_doctor_dvc_status_under_a_held_lock_names_the_holder(tmp_path: Path) -> None:
    """`dvc status` while this checkout's dvc holds the repository lock: doctor reports the holder and
    says to wait, never dvc's advice (its troubleshooting page tells how to remove lock files)."""
    from biasloop.cli.doctor import check_dvc

    inside = _checkout(tmp_path / "a")
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc)] if dvc.exists() else [sys.executable, "-m", "dvc"]
    subprocess.run(
        [*command, "init", "--no-scm", "-q"],
        cwd=inside,
        check=True,
        timeout=120,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    (inside / "stages" / "holder.py").write_text(
        "import fcntl, time\nhandle = open('.dvc/tmp/lock', 'a+')\nfcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('ready', flush=True)\ntime.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-m", "stages.holder"], cwd=inside, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        report = Report()
        running = check_running(report, inside)
        check_dvc(report, inside, running)
        ((level, _, text),) = [line for line in report.lines if line[1] == "dvc status"]
        assert level == "info" and f"PID {holder.pid}" in text and "wait" in text, text
        assert not any("remove" in t or "troubleshooting" in t for _, _, t in report.lines), report.lines
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_doctor_with_hardlink_locks_judges_by_running_processes(tmp_path: Path) -> None:
    """core.hardlink_lock: the lock is a file that exists while held, invisible in /proc/locks."""
    inside = _checkout(tmp_path / "a")
    (inside / ".dvc" / "tmp").mkdir(parents=True)
    (inside / ".dvc" / "config").write_text("[core]\n    hardlink_lock = true\n")
    (inside / ".dvc" / "tmp" / "lock").write_text("")
    idle = Report()
    check_running(idle, inside)
    ((level, _, text),) = [line for line in idle.lines if line[1] == "DVC lock"]
    assert level == "problem" and "rm " in text
    sleeper = _start(inside)
    try:
        busy = Report()
        check_running(busy, inside)
        ((level, _, text),) = [line for line in busy.lines if line[1] == "DVC lock"]
        assert level == "info" and "wait" in text and "rm " not in text
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


@pytest.mark.parametrize("content", ['{"write": {"x": {"pid": "abc", "cmd": "dvc"}}}', "{not json", '["a"]', "\xff"])
def test_doctor_on_a_garbled_rwlock(tmp_path: Path, content: str) -> None:
    """An rwlock DVC cannot read either: one line, the advice to remove it only when nothing runs."""
    inside = _checkout(tmp_path / "a")
    (inside / ".dvc" / "tmp").mkdir(parents=True)
    (inside / ".dvc" / "tmp" / "rwlock").write_text(content, errors="surrogateescape")
    report = Report()
    check_running(report, inside)
    ((level, _, text),) = [line for line in report.lines if line[1] == "DVC rwlock"]
    assert level == "problem" and "unreadable" in text and "rm " in text
