from .augment import MixUpCutMix, build_augmentation
from .datasets import CIFAR, CifarSpec, ImageTensors, load_cifar, load_dataset, load_image_folder
from .images import image_to_tensor, load_image, tensor_to_image

__all__ = ["CIFAR", "CifarSpec", "ImageTensors", "MixUpCutMix", "build_augmentation", "image_to_tensor", "load_cifar",
           "load_dataset", "load_image", "load_image_folder", "tensor_to_image"]
