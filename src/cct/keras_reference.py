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


def build_keras_cct(image_size: int = 32, num_classes: int = 10, projection_dim: int = 128, num_heads: int = 2,
                    transformer_layers: int = 2, stochastic_depth_rate: float = 0.1) -> keras.Model:
    """The example's create_cct_model, minus its augmentation layers (inputs are already scaled to [0, 1])."""
    inputs = layers.Input((image_size, image_size, 3))
    x = inputs
    for filters in (64, 128):
        x = layers.Conv2D(filters, 3, strides=1, padding="valid", use_bias=False, activation="relu",
                          kernel_initializer="he_normal")(x)
        x = layers.ZeroPadding2D(1)(x)
        x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = layers.Reshape((-1, projection_dim))(x)
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
