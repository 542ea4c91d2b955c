"""Child process for a user reward function (see spo.tasks.user_rewards.GuardedReward).

    python -m spo.tasks._reward_worker TARGET MEMORY_MB

Caps its address space at MEMORY_MB (0 = no cap), imports TARGET ("module:function" or
"file.py:function"; "pickled:FILE": a function serialised with dill), answers "ready" (or an error line naming the import failure), then for
each request line {"args": [prompt, response, problem, finish_reason], "timeout_s"} one
line {"value": float} or {"error": the traceback}. A call that overruns is stopped by our
SIGALRM; one stuck in C code is killed by the parent.
"""

from __future__ import annotations

import json
import os
import sys

from spo.tasks.workers import WORKER_ENV, limit_memory, protocol_channel


def main() -> None:
    target, memory_mb = sys.argv[1], int(sys.argv[2])
    protocol = protocol_channel()
    limit_memory(memory_mb)
    os.environ[WORKER_ENV] = "1"  # spo.train refuses to run here (a module that trains when imported)
    from spo.tasks.problems import DataError
    from spo.tasks.user_rewards import PICKLED, arg_count, import_target, run_user_function

    try:
        if target.startswith(PICKLED):
            import dill

            with open(target[len(PICKLED):], "rb") as f:
                fn = dill.load(f)
        else:
            fn = import_target(target)
        nargs = arg_count(fn, target)
    except Exception as err:  # a DataError naming the import problem, or dill's
        protocol.write(json.dumps(str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}")
                       + "\n")
        return
    protocol.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        answer = run_user_function(fn, nargs, request["args"], float(request["timeout_s"]))
        protocol.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
