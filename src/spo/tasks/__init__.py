"""Tasks: problems (datasets), prompt formats and reward functions.

    problems.py  Problem, DataError and the GSM8K / MATH / reasoning-gym loaders
    rewards.py   answer extraction and normalisation (pure)
    grader.py    MATH answers compared by math_verify under a time limit (signal or worker process)
    prompts.py   question -> prompt token ids ("chat" template or the reference's "plain")
    arith.py     procedural multi-step arithmetic with step-by-step gold solutions
    base.py      Task: problems + extract + reward + prompt ids
    dataset.py   the general dataset task (your rows, template and reward)
    user_rewards.py  reward functions you write, built-in graders as building blocks, their guards
    workers.py   time-limited, memory-capped worker processes (math grader, user rewards)
    registry.py  the built-in tasks and build_task(name, **options)
"""

from spo.tasks.base import Task
from spo.tasks.dataset import DatasetTask
from spo.tasks.problems import DataError, Problem
from spo.tasks.prompts import build_prompt_ids, build_prompt_text
from spo.tasks.registry import (
    TASKS,
    ArithStepsTask,
    GSM8KTask,
    Math500Task,
    ReasoningGymTask,
    build_task,
    task_options,
)

__all__ = [
    "DataError",
    "Problem",
    "build_prompt_ids",
    "build_prompt_text",
    "TASKS",
    "Task",
    "GSM8KTask",
    "Math500Task",
    "ReasoningGymTask",
    "ArithStepsTask",
    "DatasetTask",
    "build_task",
    "task_options",
]
