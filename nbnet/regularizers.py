"""Weight regularizers (Keras's l1, l2, l1_l2): they add l1*sum|w| + l2*sum(w^2) to the
loss and its gradient to the weight's gradient."""

from .devices import cpu
from .errors import NbnetError


class L1L2:
    def __init__(self, l1=0.0, l2=0.0):
        self.l1, self.l2 = float(l1), float(l2)

    def apply(self, weights, grads, ops=cpu, total_out=None):
        """Add the penalty's gradient into ``grads``; return the penalty (or, given
        ``total_out``, write it there, on the device ``ops``)."""
        return ops.penalty_and_gradient(weights.reshape(weights.size), self.l1, self.l2, grads.reshape(grads.size),
                                        total_out=total_out)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)


# Keras 3's lower-case names are the classes themselves; l1_l2, like Keras 3's L1L2,
# defaults to no penalty at all (Keras 2's function defaulted to 0.01 each).
l1, l2, l1_l2 = L1, L2, L1L2


def get(identifier, owner="layer"):
    """None, a regularizer object, a Keras name ('l1', 'l2', 'l1_l2'), or a config dict."""
    if identifier is None or isinstance(identifier, L1L2):
        return identifier
    if isinstance(identifier, dict):
        return L1L2(**identifier)
    # The strings are Keras 2's (Keras 3 accepts only 'l1' and 'l2'): 'l1_l2' means 0.01 each.
    named = {"l1": L1, "l2": L2, "l1_l2": lambda: L1L2(l1=0.01, l2=0.01)}
    if identifier in named:
        return named[identifier]()
    raise NbnetError(f"{owner}: unknown regularizer {identifier!r}; use 'l1', 'l2', 'l1_l2' or nbnet.regularizers.L1L2.")
