"""Named OS threads in the per-thread CPU that the benchmarks read from /proc (real threads,
the real scheduler)."""


def test_os_thread_names_show_in_per_thread_cpu():
    """name_os_thread makes a thread visible by name in /proc, where the benches' per-thread CPU
    (bench.machine.thread_cpu / busy_cores) reads it."""
    import os
    import threading
    import time

    from bench.machine import busy_cores, thread_cpu
    from recpilot.lifecycle import name_os_thread

    before = thread_cpu(os.getpid())
    started, done = threading.Event(), threading.Event()

    def spin():  # busy until the reading below is taken, however late this thread is scheduled
        name_os_thread()
        started.set()
        t_end = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < t_end:
            pass

    t = threading.Thread(target=spin, name="rp-spinner-thread-long")  # longer than the OS's 15 bytes
    t.start()
    try:
        assert started.wait(10)
        t0 = time.monotonic()
        while True:  # until the spinner has used CPU that /proc counts (10 ms ticks)
            during = thread_cpu(os.getpid())
            if during.get("rp-spinner-thre", 0.0) > 0 or time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
    finally:
        done.set()
        t.join()
    assert "rp-spinner-thre" in during  # truncated to 15 bytes
    assert during["rp-spinner-thre"] > 0
    assert "rp-spinner-thre" in busy_cores(before, during, time.monotonic() - t0 + 0.001)
    assert thread_cpu(-1) == {}  # a process that does not exist
