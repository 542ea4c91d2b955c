"""Tasks: problems (datasets), prompt formats and reward functions.

    problems.py  Problem, DataError and the GSM8K / MATH / reasoning-gym loaders
    rewards.py   answer extraction and normalisation (pure)
    grader.py    MATH answers compared by math_verify under a time limit (signal or worker process)
    prompts.py   question -> prompt token ids ("chat" template or the reference's "plain")
    arith.py     procedural multi-step arithmetic with step-by-step gold solutions
    registry.py  Task (problems + extract + reward) and build_task(name, **options)
"""

from spo.tasks.problems import DataError, Problem
from spo.tasks.prompts import build_prompt_ids, build_prompt_text
from spo.tasks.registry import (
    TASKS,
    ArithStepsTask,
    GSM8KTask,
    Math500Task,
    ReasoningGymTask,
    Task,
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
    "build_task",
    "task_options",
]
