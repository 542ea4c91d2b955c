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
import sys

from spo.tasks.workers import limit_memory, protocol_channel

MEMORY_ENV = "SPO_GRADER_MEMORY_MB"
DEFAULT_MEMORY_MB = 1024


def main() -> None:
    limit_memory(int(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_MB)))
    protocol = protocol_channel()

    from spo.tasks.grader import math_equal_in_main_thread

    math_equal_in_main_thread("1/2", "\\frac{1}{2}", 30.0)  # warm-up: imports, parser tables
    protocol.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        equal = math_equal_in_main_thread(request["pred"], request["gold"], float(request["timeout_s"]))
        protocol.write(json.dumps({"equal": equal}) + "\n")


if __name__ == "__main__":
    main()
