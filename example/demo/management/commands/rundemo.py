"""Run the demo's processes, watch them, and stop them all when one of them stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils import timezone

from django_celery_monitor.models import TaskState, WorkerState

#: How long each process gets to stop on its own before it is made to.
STOP_TIMEOUT = 12.0
#: How many lines of a process's log are shown when it stopped by itself.
TAIL_LINES = 20
#: How long the demo waits for its web server to answer before it prints the links anyway.
WEB_SERVER_WAIT = 30.0


def _url_host(host: str) -> str:
    """A host as a URL (and runserver) writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _check_port(host: str, port: int) -> None:
    """Fail at once, and say what to do, when the web server's port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(
                f"Port {port} on {host} is not free ({exc.strerror or exc}): another program "
                f"uses it. PORT={port + 1} scripts/demo starts the demo on another port."
            ) from None


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class Process:
    """One child process, in a session of its own so that Ctrl-C reaches only the demo."""

    def __init__(self, label: str, command: list[str], log_path: Path) -> None:
        self.label = label
        self.command = command
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def tail(self, lines: int = TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(log.tell() - 16384, 0))
                text = log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(could not read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> str:
        """Ask the process to stop, insist after ``timeout``; say how it went."""
        if self.popen is None:
            return "stopped"
        if self.popen.poll() is not None:
            # It stopped by itself: take what it left of its session with it (a worker's
            # pool processes).
            self._signal(signal.SIGKILL, group=True)
            return "stopped"
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGQUIT, 5.0)):
            self._signal(sig)
            try:
                self.popen.wait(wait)
                return "stopped"
            except subprocess.TimeoutExpired:
                continue
        # Kill the whole session: a worker's pool processes too.
        self._signal(signal.SIGKILL, group=True)
        self.popen.wait()
        return "killed"

    def _signal(self, sig: int, group: bool = False) -> None:
        try:
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass


class Command(BaseCommand):
    help = (
        "Start a Celery worker, the monitor's camera, a task generator and the web server; "
        "stop them all when one of them stops, or on Ctrl-C."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="The web server's port.")
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="The address the web server listens on (127.0.0.1: this machine only; "
            "0.0.0.0 lets anyone who reaches the machine log in as admin / admin).",
        )
        parser.add_argument(
            "--status-every",
            type=float,
            default=30.0,
            help="Seconds between two status lines (0: none).",
        )
        parser.add_argument(
            "--interval", type=float, default=1.0, help="Seconds between two demo tasks."
        )

    def handle(self, *args, **options):
        host, port = options["host"], options["port"]
        _check_port(host, port)
        log_dir = Path(settings.DATA_DIR) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        celery = [sys.executable, "-m", "celery", "-A", "example"]
        self.processes = [
            Process(
                "the Celery worker",
                [
                    *celery,
                    "worker",
                    "-E",
                    "-l",
                    "info",
                    "-c",
                    "2",
                    "-Q",
                    "celery,reports",
                    "--hostname",
                    "demo@%h",
                ],
                log_dir / "worker.log",
            ),
            Process(
                "the monitor's camera",
                [*manage, "celery_monitor", "--frequency", "1", "--enable-events", "10"],
                log_dir / "camera.log",
            ),
            Process(
                "the task generator",
                [*manage, "generate_tasks", "--interval", str(options["interval"])],
                log_dir / "generator.log",
            ),
            Process(
                "the web server",
                [*manage, "runserver", f"{_url_host(host)}:{port}", "--noreload"],
                log_dir / "web.log",
            ),
        ]
        self.stopping = False
        signal.signal(signal.SIGINT, self._ask_to_stop)
        signal.signal(signal.SIGTERM, self._ask_to_stop)

        started = time.monotonic()
        for process in self.processes:
            process.start()
        failed = self._wait_for_the_web_server(host, port)
        if failed is None and not self.stopping:
            base = f"http://{_url_host('127.0.0.1' if host in ('0.0.0.0', '::') else host)}:{port}"
            self.stdout.write(
                f"\n  django-celery-monitor demo\n"
                f"  --------------------------\n"
                f"  Admin:     {base}/admin/celery_monitor/\n"
                f"  Dashboard: {base}/admin/celery_monitor/dashboard/ (tick Live to watch it)\n"
                f"  Health:    {base}/monitor/health/\n"
                f"  Login:     admin / admin\n"
                f"  Logs:      {log_dir}/ (worker, camera, generator, web)\n"
                f"  Ctrl-C stops the worker, the camera, the generator and the web server.\n"
            )
            self.stdout.flush()
            failed = self._watch(started, options["status_every"])
        self._stop_all()
        if failed is not None:
            raise CommandError(
                f"The demo stopped because {failed.label} stopped "
                f"(see {failed.log_path} for its whole log)."
            )
        self.stdout.write("The demo stopped.")

    def _ask_to_stop(self, signum, frame) -> None:
        self.stopping = True

    def _wait_for_the_web_server(self, host: str, port: int) -> Process | None:
        """Wait until the web server answers (the links are printed then), Ctrl-C, or a
        process that stops; return that process."""
        target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        deadline = time.monotonic() + WEB_SERVER_WAIT
        while not self.stopping and time.monotonic() < deadline:
            stopped = self._stopped_by_itself()
            if stopped is not None:
                return stopped
            try:
                socket.create_connection((target, port), timeout=0.5).close()
                return None
            except OSError:
                time.sleep(0.2)
        return None

    def _watch(self, started: float, status_every: float) -> Process | None:
        """Wait for Ctrl-C or for a process to stop; return the process that stopped."""
        next_status = started + 5.0
        first_seen = False
        since = timezone.now()
        while not self.stopping:
            stopped = self._stopped_by_itself()
            if stopped is not None:
                return stopped
            now = time.monotonic()
            if status_every and now >= next_status:
                first_seen = self._status(now - started, since, first_seen)
                next_status = now + (status_every if first_seen else 5.0)
            time.sleep(0.2)
        return None

    def _stopped_by_itself(self) -> Process | None:
        """The first process that stopped, having said so with the end of its log."""
        for process in self.processes:
            code = process.poll()
            if code is not None:
                how = f"exit code {code}" if code >= 0 else f"signal {-code}"
                self.stderr.write(
                    f"\n{_cap(process.label)} stopped by itself ({how}). "
                    f"The last lines of {process.log_path}:\n\n{process.tail()}\n"
                )
                return process
        return None

    def _status(self, elapsed: float, since, first_seen: bool) -> bool:
        """Print what the monitor recorded in this run; return whether it recorded a task."""
        try:
            states = Counter(
                TaskState.objects.filter(tstamp__gte=since).values_list("state", flat=True)
            )
            workers = [
                f"{worker.hostname} {'online' if worker.is_alive() else 'offline'}"
                for worker in WorkerState.objects.filter(last_heartbeat__gte=since)
            ]
        except Exception as exc:  # the database is busy or not there yet: try again later
            self.stdout.write(f"[{elapsed:4.0f}s] status unavailable: {exc}")
            return first_seen
        finally:
            connections.close_all()
        total = sum(states.values())
        if not total and not first_seen:
            self.stdout.write(f"[{elapsed:4.0f}s] waiting for the first tasks to be recorded...")
            return False
        detail = ", ".join(f"{count} {state}" for state, count in states.most_common())
        self.stdout.write(
            f"[{elapsed:4.0f}s] {total} tasks recorded in this run ({detail or 'none'}); "
            f"workers: {', '.join(workers) or 'none yet'}"
        )
        self.stdout.flush()
        return True

    def _stop_all(self) -> None:
        self.stdout.write(
            f"\nStopping... (the worker finishes the tasks it is running first, for up to "
            f"{STOP_TIMEOUT:.0f} s)"
        )
        self.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # New tasks first, then the worker (it says goodbye), then the camera (it records
        # that goodbye in its last shot), then the web server.
        order = [self.processes[i] for i in (2, 0, 1, 3)]
        for process in order:
            outcome = process.stop()
            if outcome != "stopped":
                self.stderr.write(f"{_cap(process.label)} did not stop in time: {outcome}.")
