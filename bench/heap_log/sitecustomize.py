"""The server's heap every 30 s, for bench/app_load.py:

    PYTHONPATH=bench/heap_log MB_MEMLOG=FILE python -m bench.app_load …

Python imports this module at start-up from PYTHONPATH; in the `python -m app` process only, a thread appends one
JSON line every 30 s to FILE: RSS, glibc's mallinfo2 (arena bytes, mmapped bytes, bytes in use, free bytes kept in
the arenas), Python threads and objects tracked by the garbage collector.
"""

import os

if os.environ.get("MB_MEMLOG") and open("/proc/self/cmdline", "rb").read().split(b"\0")[1:3] == [b"-m", b"app"]:
    import ctypes
    import gc
    import json
    import re
    import threading
    import time

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
            + ("keepcost",)
        ]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    path = os.environ["MB_MEMLOG"]

    def rss_mb() -> int:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // 1024

    def log() -> None:
        started = time.time()
        while True:
            time.sleep(30)
            m = libc.mallinfo2()
            row = {
                "t": round(time.time() - started), "rss": rss_mb(),
                "arena_mb": m.arena >> 20, "mmap_mb": m.hblkhd >> 20, "inuse_mb": m.uordblks >> 20,
                "free_mb": m.fordblks >> 20, "threads": threading.active_count(),
                "gc_objects": len(gc.get_objects()),
            }  # fmt: skip
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    threading.Thread(target=log, daemon=True).start()
