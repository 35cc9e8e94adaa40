"""``stop_on_signals``: real signals sent to this process - the first one is a request, a second Ctrl-C stops at
once, a SIGTERM after a request waits, and the previous handlers come back."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rlzoo_transfer.stop import stop_on_signals


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler at the next bytecode boundary of the main thread


def test_first_signal_is_a_request_second_ctrl_c_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals() as stop:
            assert not stop and stop.signal is None
            _deliver(signal.SIGINT)
            assert stop and stop.signal == "SIGINT" and stop.exit_status == 130
            _deliver(signal.SIGTERM)  # what a sweep sends after the terminal's Ctrl-C: ignored, the run checkpoints
            assert stop.signal == "SIGINT"
            _deliver(signal.SIGINT)
            pytest.fail("a second Ctrl-C must raise KeyboardInterrupt")
    assert "SIGINT: stopping at the next agent step" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_request_and_its_exit_status():
    with stop_on_signals() as stop:
        _deliver(signal.SIGTERM)
    assert stop.signal == "SIGTERM" and stop.exit_status == 143


def test_outside_the_main_thread_nothing_is_installed():
    seen = []
    before = signal.getsignal(signal.SIGINT)

    def body():
        with stop_on_signals() as stop:
            seen.append((bool(stop), signal.getsignal(signal.SIGINT)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [(False, before)]


def test_a_forked_child_ignores_the_terminals_signals():
    """A child forked inside the block (a data-loading worker) inherits the handler; the terminal's Ctrl-C reaches
    it too, and printed the stop message once per worker.  In the child the handler now does nothing at all."""
    r, w = os.pipe()
    with stop_on_signals() as stop:
        pid = os.fork()
        if pid == 0:   # the child: two Ctrl-Cs, no message, no KeyboardInterrupt, its own request untouched
            os.close(r)
            try:
                os.dup2(w, 2)
                _deliver(signal.SIGINT)
                _deliver(signal.SIGINT)
                os.write(w, b"alive" if not stop else b"request")
            finally:
                os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            said = f.read()
    assert os.waitstatus_to_exitcode(status) == 0 and said == b"alive" and not stop


@pytest.mark.parametrize("module", ["enjoy", "bench", "select", "curves", "publish", "confirm", "run_summary"])
def test_clis_with_nothing_to_resume_end_a_ctrl_c_in_one_line(module, monkeypatch, capsys):
    """Their ``main`` goes through ``one_line_interrupt`` (tests/test_enjoy.py sends a real SIGINT to one)."""
    import importlib

    mod = importlib.import_module(f"rlzoo_transfer.{module}")

    def interrupted_parse(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("argparse.ArgumentParser.parse_args", interrupted_parse)
    assert mod.main([]) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted")
