"""alexnet: the 2012 AlexNet system as real, fast, trustworthy software.

    >>> import alexnet
    >>> model = alexnet.create_model("alexnet")          # the paper's network
    >>> [m.name for m in alexnet.list_models()]
    ['alexnet', 'alexnet_owt', 'alexnet_small']
"""

from alexnet.models import LAYER_NAMES, create_model, list_models

__version__ = "0.1.0"
__all__ = ["LAYER_NAMES", "__version__", "create_model", "list_models"]
