"""Child process for the "process" math-grader backend (see grader.math_answers_equal).

Protocol: the parent writes one JSON object per line {"pred", "gold", "timeout_s"}; we
answer one line {"equal": bool}. Here we are a main thread, so math_verify runs under our
SIGALRM limit; if it still hangs (inside C code), the parent kills this process. We
answer "ready" once SymPy and math_verify are imported and warmed up.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
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
