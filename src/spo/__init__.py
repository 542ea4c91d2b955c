"""spo: Segment Policy Optimization (arXiv 2505.23564) and its baselines.

Data flow, one folder per stage:
    tasks -> sample -> partition -> estimate -> optimize -> evaluate
    (train/ holds the loop that runs them; config.py holds every option).
"""

__version__ = "0.1.0"
