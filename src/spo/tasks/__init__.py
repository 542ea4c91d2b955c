"""Tasks: problems (datasets), prompt formats and reward functions."""
