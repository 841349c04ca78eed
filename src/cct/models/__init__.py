from .cct import CCT, CCTConfig
from .registry import count_macs, count_parameters, create_model, list_models, model_config, register

__all__ = ["CCT", "CCTConfig", "count_macs", "count_parameters", "create_model", "list_models", "model_config",
           "register"]
