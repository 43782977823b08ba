"""torch.autograd's Tensor API: `grad(outputs, inputs, create_graph=...)` and `backward`.

    penalty = (engine.autograd.grad(critic(x).sum(), x, create_graph=True)[0] ** 2).sum()
    (loss + penalty).backward()      # the penalty's own derivative reaches the parameters

`engine.autodiff` has the function transformations (grad(f), jvp, hessian, hvp) built on it.
"""

from engine.tensor import backward, grad

__all__ = ["grad", "backward"]
