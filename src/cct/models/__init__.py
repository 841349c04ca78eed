from .cct import CCT, CCTConfig, adapted, adapted_config
from .registry import count_macs, count_parameters, create_model, list_models, model_config, register

__all__ = ["CCT", "CCTConfig", "adapted", "adapted_config", "count_macs", "count_parameters", "create_model",
           "list_models", "model_config", "register"]
