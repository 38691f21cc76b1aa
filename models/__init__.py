"""Model definitions, installed as ``nbnet.zoo``: each module here has ``build(optimizer,
learning_rate, seed)`` returning a compiled model, plus its training defaults ``EPOCHS`` and
``BATCH_SIZE``; a build that also takes ``input_shape`` and ``num_classes`` is given
them from the data by ``nbnet train --data`` (``small_cnn`` fits any image size).
``nbnet train --model NAME`` takes a name from ``DEFINITIONS`` or the path of a .py file
of the same shape. ``mnist_cnn.nbnet`` is the reference model,
trained by ``nbnet train`` with its defaults.
"""

import importlib
import importlib.util
from pathlib import Path

from nbnet.errors import NbnetError

DEFINITIONS = ("mnist_cnn", "mnist_mlp", "mnist_resnet", "small_cnn")
DEFAULT = "mnist_cnn"
REFERENCE_MODEL = Path(__file__).with_name("mnist_cnn.nbnet")


def get_definition(name_or_path):
    """The definition module for a name in DEFINITIONS or a path to a .py definition."""
    if name_or_path in DEFINITIONS:
        return importlib.import_module(f"{__name__}.{name_or_path}")
    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"nbnet_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "build", None)):
            raise NbnetError(f"{path} defines no build(optimizer, learning_rate) function returning a compiled model.")
        return module
    raise NbnetError(f"Unknown model {name_or_path!r}: use one of {', '.join(DEFINITIONS)} or the path of a .py file "
                     "with a build(optimizer, learning_rate) function.")
