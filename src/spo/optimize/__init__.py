"""Stage 4: policy losses (PPO-clip, KL penalty), pure tensor code."""
