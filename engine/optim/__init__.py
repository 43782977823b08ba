"""`engine.optim`: SGD, Adam, AdamW and schedulers with torch.optim's semantics."""

from engine.nn.utils import clip_grad_norm_
from engine.optim import lr_scheduler
from engine.optim.adam import Adam, AdamW
from engine.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from engine.optim.optimizer import Optimizer
from engine.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRScheduler",
    "Optimizer",
    "StepLR",
    "clip_grad_norm_",
    "lr_scheduler",
]
