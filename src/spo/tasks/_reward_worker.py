"""Child process for a user reward function (see spo.tasks.user_rewards.GuardedReward).

    python -m spo.tasks._reward_worker TARGET MEMORY_MB

Caps its address space at MEMORY_MB (0 = no cap), imports TARGET ("module:function" or
"file.py:function"), answers "ready" (or an error line naming the import failure), then for
each request line {"args": [prompt, response, problem, finish_reason], "timeout_s"} one
line {"value": float} or {"error": the traceback}. A call that overruns is stopped by our
SIGALRM; one stuck in C code is killed by the parent.
"""

from __future__ import annotations

import json
import sys

from spo.tasks.workers import limit_memory, protocol_channel


def main() -> None:
    target, memory_mb = sys.argv[1], int(sys.argv[2])
    protocol = protocol_channel()
    limit_memory(memory_mb)
    from spo.tasks.problems import DataError
    from spo.tasks.user_rewards import arg_count, import_target, run_user_function

    try:
        fn = import_target(target)
        nargs = arg_count(fn, target)
    except DataError as err:
        protocol.write(json.dumps(str(err)) + "\n")
        return
    protocol.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        answer = run_user_function(fn, nargs, request["args"], float(request["timeout_s"]))
        protocol.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
