"""Fashion-MNIST the Keras way: ``load_data()`` returns verified uint8 arrays, (60000, 28, 28)
clothing images and labels 0-9, from the first source that works, under MNIST's rules
(see ``nbnet.datasets.mnist``): the local cache, a directory of the four IDX files
(``data_dir=`` or ``$NBNET_DATA_DIR``), Debian's ``dataset-fashion-mnist`` package, the
public mirrors (``$NBNET_FASHION_MNIST_MIRRORS`` replaces them). Every source must match
the known SHA-256 digests of the decoded arrays.
"""

from ..paths import nbnet_home
from .mnist import Spec, _load

EXPECTED_SHA256 = {
    "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}
DEFAULT_MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
SPEC = Spec("Fashion-MNIST", "fashion_mnist.npz", EXPECTED_SHA256, "NBNET_FASHION_MNIST_MIRRORS", DEFAULT_MIRRORS,
            system_dirs=("/usr/share/datasets/fashion-mnist",))
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def load_data(data_dir=None, verbose=True):
    """Return Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))``, uint8; raises
    DatasetError listing every source tried when none works."""
    a = _load(data_dir, verbose, cache_dir=nbnet_home() / "datasets", expected=EXPECTED_SHA256, spec=SPEC)
    return (a["x_train"], a["y_train"]), (a["x_test"], a["y_test"])
