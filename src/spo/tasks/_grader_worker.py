"""Child process for the "process" math-grader backend (see grader.math_answers_equal).

Protocol: the parent writes one JSON object per line {"pred", "gold", "timeout_s"}; we
answer one line {"equal": bool}. Here we are a main thread, so math_verify runs under our
SIGALRM limit; if it still hangs (inside C code), the parent kills this process. We
answer "ready" once SymPy and math_verify are imported and warmed up.

Memory: before anything else the worker caps its own address space (RLIMIT_AS) at
$SPO_GRADER_MEMORY_MB (default 1024; 0 = no cap), so that an answer such as `2^{2^{40}}`
makes SymPy raise MemoryError (graded "not equal") instead of eating the machine's RAM; if
the worker dies of it, the parent starts a new one.
"""

from __future__ import annotations

import json
import os
import resource
import sys

MEMORY_ENV = "SPO_GRADER_MEMORY_MB"
DEFAULT_MEMORY_MB = 1024


def limit_memory() -> None:
    megabytes = int(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_MB))
    if megabytes > 0:
        limit = megabytes << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    limit_memory()
    # Keep the protocol channel clean: anything else printed to stdout goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    from spo.tasks.grader import math_equal_in_main_thread

    math_equal_in_main_thread("1/2", "\\frac{1}{2}", 30.0)  # warm-up: imports, parser tables
    protocol.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        equal = math_equal_in_main_thread(request["pred"], request["gold"], float(request["timeout_s"]))
        protocol.write(json.dumps({"equal": equal}) + "\n")


if __name__ == "__main__":
    main()
