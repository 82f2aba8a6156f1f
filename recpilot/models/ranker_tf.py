"""The DLRM-style ranker in TensorFlow/Keras: the same network as ranker_torch.py.

    dense [N, D] --standardise (stored in the model)--> bottom MLP --> b [N, E]
    ids [N, K]   --one embedding table per id column (ids mod buckets)--> e_1..e_K [N, E]
    pairwise dot interactions of [b, e_1, .., e_K], i < j; top MLP over [b, interactions]
    --> logit --> sigmoid --> score [N]
    with a prior column (``prior_index`` >= 0): logit = log(p / (1 - p)) of that raw dense column + the
    top MLP's output, whose last layer starts at zero (same as ranker_torch.py)

Exported as a SavedModel (``saved_model/``) with the signature ``serving_default(dense: FP32 [-1, D],
ids: INT64 [-1, K]) -> {"score": FP32 [-1]}``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recpilot.models.loader import prepare_tensorflow_import

prepare_tensorflow_import()  # triton before TF, see there

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

ARTIFACT = "saved_model"
SIGNATURE = "serving_default"


class DLRM(keras.Model):
    def __init__(self, dense_dim: int, buckets: list[int], emb_dim: int, bottom: list[int], top: list[int],
                 dense_mean: np.ndarray, dense_std: np.ndarray, base_rate: float = 0.5, seed: int = 0,
                 prior_index: int = -1) -> None:
        super().__init__()
        self.prior_index = int(prior_index)
        self.dense_dim = dense_dim
        self.n_ids = len(buckets)
        self.mean = tf.constant(np.asarray(dense_mean, dtype=np.float32))
        self.inv_std = tf.constant(1.0 / np.maximum(np.asarray(dense_std, dtype=np.float32), 1e-6))
        self.buckets = tf.constant(np.asarray(buckets, dtype=np.int64))
        init = keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
        self.embeddings = [keras.layers.Embedding(b, emb_dim, embeddings_initializer=init, name=f"emb_{k}")
                           for k, b in enumerate(buckets)]
        self.bottom = [keras.layers.Dense(h, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed + 1 + i))
                       for i, h in enumerate([*bottom, emb_dim])]
        p = min(max(base_rate, 1e-4), 1 - 1e-4)
        self.top = [keras.layers.Dense(h, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed + 100 + i))
                    for i, h in enumerate(top)]
        if self.prior_index >= 0:  # the prior carries the base rate; the correction starts at 0
            self.top.append(keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros"))
        else:
            self.top.append(keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + 200),
                                               bias_initializer=keras.initializers.Constant(math.log(p / (1 - p)))))
        n_vec = len(buckets) + 1
        li, lj = np.triu_indices(n_vec, k=1)
        self.pairs = tf.constant(np.stack([li, lj], axis=1).astype(np.int32))

    def logits(self, dense, ids, training: bool = False):
        x = (tf.cast(dense, tf.float32) - self.mean) * self.inv_std
        for layer in self.bottom:
            x = layer(x)
        ids = tf.math.floormod(tf.cast(ids, tf.int64), self.buckets)
        vecs = [x] + [emb(ids[:, k]) for k, emb in enumerate(self.embeddings)]
        z = tf.stack(vecs, axis=1)                          # [N, K+1, E]
        gram = tf.matmul(z, z, transpose_b=True)            # [N, K+1, K+1]
        inter = tf.transpose(tf.gather_nd(tf.transpose(gram, [1, 2, 0]), self.pairs))  # [N, P]
        h = tf.concat([x, inter], axis=1)
        for layer in self.top:
            h = layer(h)
        out = tf.squeeze(h, axis=-1)
        if self.prior_index >= 0:
            p = tf.clip_by_value(tf.cast(dense, tf.float32)[:, self.prior_index], 1e-6, 1.0 - 1e-6)
            out = out + (tf.math.log(p) - tf.math.log1p(-p))
        return out

    def embedding_penalty(self, ids):
        """Mean over the batch of the summed squared norms of the looked-up embedding rows."""
        ids = tf.math.floormod(tf.cast(ids, tf.int64), self.buckets)
        total = tf.add_n([tf.reduce_sum(tf.square(emb(ids[:, k]))) for k, emb in enumerate(self.embeddings)])
        return total / tf.cast(tf.maximum(tf.shape(ids)[0], 1), tf.float32)

    def call(self, inputs, training: bool = False):
        dense, ids = inputs
        return tf.sigmoid(self.logits(dense, ids, training))


class _Serving(tf.Module):
    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.model = model
        d, k = model.dense_dim, model.n_ids
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, d], tf.float32, name="dense"),
                             tf.TensorSpec([None, k], tf.int64, name="ids")],
        )

    def _serve(self, dense, ids):
        return {"score": self.model((dense, ids), training=False)}


class TFRanker:
    framework = "tensorflow"
    artifact = ARTIFACT

    def __init__(self, dense_dim: int, buckets: list[int], hp: dict, seed: int, dense_mean: np.ndarray,
                 dense_std: np.ndarray, base_rate: float, prior_index: int = -1) -> None:
        keras.utils.set_random_seed(seed)
        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # noqa: BLE001 - older TF
            pass
        self.model = DLRM(dense_dim, list(buckets), int(hp["embedding_dim"]), list(hp["bottom"]), list(hp["top"]),
                          dense_mean, dense_std, base_rate, seed, prior_index)
        self.prior = prior_index >= 0
        self.model((tf.zeros([1, dense_dim]), tf.zeros([1, len(buckets)], tf.int64)))  # build the variables
        wd = float(hp.get("weight_decay", 0.0))
        self.opt = keras.optimizers.Adam(learning_rate=float(hp["lr"]))
        self.weight_decay = wd
        self.embedding_l2 = float(hp.get("embedding_l2", 0.0))
        # as in torch: weight decay (L2, coupled) on the MLPs only; the embeddings' L2 is `embedding_l2`
        # on the rows looked up
        emb_ids = {id(v) for e in self.model.embeddings for v in e.trainable_variables}
        self._decayed = [v for v in self.model.trainable_variables if id(v) not in emb_ids]
        self._step = tf.function(self._train_step, reduce_retracing=True)
        self._pred = tf.function(lambda d, i: self.model((d, i), training=False), reduce_retracing=True)

    def num_params(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self.model.trainable_variables))

    def _train_step(self, dense, ids, labels):
        with tf.GradientTape() as tape:
            logit = self.model.logits(dense, ids, training=True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logit))
            if self.weight_decay:
                loss += self.weight_decay * 0.5 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in self._decayed])
            if self.embedding_l2:
                loss += self.embedding_l2 * self.model.embedding_penalty(ids)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.opt.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def train_batch(self, dense: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> float:
        return float(self._step(tf.constant(dense), tf.constant(ids), tf.constant(labels)))

    def predict(self, dense: np.ndarray, ids: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        out = [self._pred(tf.constant(dense[s:s + batch_size]), tf.constant(ids[s:s + batch_size])).numpy()
               for s in range(0, len(dense), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def get_state(self) -> list:
        return [np.array(w, copy=True) for w in self.model.get_weights()]

    def set_state(self, state: list) -> None:
        self.model.set_weights(state)

    def export(self, directory: Path) -> str:
        module = _Serving(self.model)
        tf.saved_model.save(module, str(Path(directory) / ARTIFACT), signatures={SIGNATURE: module.serve})
        return ARTIFACT
