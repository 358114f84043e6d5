"""funcattr: functional attribution for PyTorch models, built on ``torch.func``."""
