"""compact-transformers: Compact Convolutional Transformers (Hassani et al., 2021) in PyTorch."""

from .errors import CCTError
from .inference import Classifier, Prediction
from .models import CCT, CCTConfig, count_macs, count_parameters, create_model, list_models
from .pretrained import from_pretrained

__version__ = "0.1.0"
__all__ = ["CCT", "Classifier", "Prediction", "CCTConfig", "CCTError", "count_macs", "count_parameters", "create_model", "from_pretrained",
           "list_models"]
