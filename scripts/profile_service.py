"""Run one service under cProfile, timed by the CPU clock of its main thread.

    . .run/env
    kill -TERM "$(cat .run/pids/route.pid)"        # free the service's ports
    GRPC_PORT=17003 METRICS_PORT=17103 \
        .venv/bin/python scripts/profile_service.py invoicing_route route.prof &
    invoicectl bench --count 2000 --no-baselines    # the load to profile
    kill -TERM %1                                    # stats are written on exit
    .venv/bin/python -c "import pstats; pstats.Stats('route.prof').sort_stats('cumulative').print_stats(40)"
    .venv/bin/python deploy/local/stack.py up        # the stack's own service again

On this shared 2-core machine a sampling profiler (py-spy) mostly shows
where threads wait to be scheduled; ``time.thread_time`` counts only the
CPU the main thread (the event loop) used. cProfile's own cost per call
inflates code made of many small calls, so read shares, not absolutes.
"""

from __future__ import annotations

import atexit
import cProfile
import runpy
import sys
import time


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: profile_service.py <module, e.g. invoicing_route> <output.prof>")
    module, output = sys.argv[1], sys.argv[2]
    profile = cProfile.Profile(time.thread_time)

    def dump() -> None:
        profile.disable()
        profile.dump_stats(output)

    # The services stop on SIGTERM by returning from their worker, so the
    # interpreter exits normally and atexit runs.
    atexit.register(dump)
    sys.argv = [module]
    profile.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
