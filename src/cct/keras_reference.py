"""The keras.io CCT example's model, built with Keras 3, as the reference `cct_keras` is checked and timed
against. Needs the optional `keras` package and a backend (pip install -e '.[bench]')."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


class StochasticDepth(layers.Layer):
    def __init__(self, drop_prob: float, **kwargs):
        super().__init__(**kwargs)
        self.drop_prob = drop_prob
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x, training=None):
        if training:
            keep_prob = 1 - self.drop_prob
            shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            random_tensor = keep_prob + keras.random.uniform(shape, 0, 1, seed=self.seed_generator)
            return (x / keep_prob) * ops.floor(random_tensor)
        return x


class PositionEmbedding(layers.Layer):
    def __init__(self, sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(shape=(self.sequence_length, input_shape[-1]),
                                                   initializer="glorot_uniform", name="embeddings")

    def call(self, inputs):
        return ops.broadcast_to(ops.convert_to_tensor(self.position_embeddings), ops.shape(inputs))


class SequencePooling(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = layers.Dense(1)

    def call(self, x):
        weights = ops.transpose(ops.softmax(self.attention(x), axis=1), axes=(0, 2, 1))
        return ops.squeeze(ops.matmul(weights, x), -2)


class CCTTokenizer(layers.Layer):
    def __init__(self, kernel_size=3, stride=1, padding=1, pooling_kernel_size=3, pooling_stride=2,
                 num_output_channels=(64, 128), **kwargs):
        super().__init__(**kwargs)
        self.conv_model = keras.Sequential()
        for channels in num_output_channels:
            self.conv_model.add(layers.Conv2D(channels, kernel_size, stride, padding="valid", use_bias=False,
                                              activation="relu", kernel_initializer="he_normal"))
            self.conv_model.add(layers.ZeroPadding2D(padding))
            self.conv_model.add(layers.MaxPooling2D(pooling_kernel_size, pooling_stride, "same"))

    def call(self, images):
        outputs = self.conv_model(images)
        shape = ops.shape(outputs)
        return ops.reshape(outputs, (-1, shape[1] * shape[2], shape[-1]))


def build_keras_cct(image_size: int = 32, num_classes: int = 10, projection_dim: int = 128, num_heads: int = 2,
                    transformer_layers: int = 2, stochastic_depth_rate: float = 0.1) -> keras.Model:
    """The example's create_cct_model, layer for layer (so that its saved weights load): inputs are pixel
    values in [0, 255], rescaled, cropped and flipped by its augmentation layers (active in training only).
    Its MLP uses the exact GELU of the TensorFlow original (tf.nn.gelu) that trained the seed card's model."""
    inputs = layers.Input((image_size, image_size, 3))
    augmentation = keras.Sequential([layers.Rescaling(scale=1.0 / 255), layers.RandomCrop(image_size, image_size),
                                     layers.RandomFlip("horizontal")], name="data_augmentation")
    x = CCTTokenizer()(augmentation(inputs))
    x = x + PositionEmbedding(sequence_length=x.shape[1])(x)
    for rate in np.linspace(0, stochastic_depth_rate, transformer_layers):
        x1 = layers.LayerNormalization(epsilon=1e-5)(x)
        attention = layers.MultiHeadAttention(num_heads=num_heads, key_dim=projection_dim, dropout=0.1)(x1, x1)
        x2 = layers.Add()([StochasticDepth(rate)(attention), x])
        x3 = layers.LayerNormalization(epsilon=1e-5)(x2)
        for units in (projection_dim, projection_dim):
            x3 = layers.Dropout(0.1)(layers.Dense(units, activation=keras.activations.gelu)(x3))
        x = layers.Add()([StochasticDepth(rate)(x3), x2])
    x = SequencePooling()(layers.LayerNormalization(epsilon=1e-5)(x))
    return keras.Model(inputs, layers.Dense(num_classes)(x))
