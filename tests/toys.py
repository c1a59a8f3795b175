"""Small families that exercise the loop's contract: two optimizers, a mutable collection, a
sharded parameter. Importable by subprocess tests (fake multi-device runs)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lab import configs, train
from lab.tasks import metrics
from lab.models.mlp import MLP
from lab.task import Task
from lab.tasks.classification import ClassificationTask

NOISE = 2
FEATURES = 4


def toy_gan_arrays(n: int = 64, seed: int = 0) -> dict:
    """Real points on a line plus the generator's noise: noise travels with the batch, so every
    device count draws the same numbers (a GAN drawing z from the step's rng would not)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    real = np.concatenate([t, 2 * t, -t, 0.5 * t], axis=1) + 0.05 * rng.standard_normal((n, FEATURES)).astype(np.float32)
    return {"inputs": real, "noise": rng.standard_normal((n, NOISE)).astype(np.float32)}


class ToyGAN(Task):
    """Generator Dense(NOISE -> FEATURES) against discriminator Dense(FEATURES -> 1): the
    non-saturating GAN losses, the discriminator updated first, then the generator."""

    def __init__(self):
        self.generator, self.discriminator = nn.Dense(FEATURES), nn.Dense(1)

    def init(self, rng):
        g_rng, d_rng = jax.random.split(rng)
        return {"params": {
            "generator": self.generator.init(g_rng, jnp.zeros((1, NOISE)))["params"],
            "discriminator": self.discriminator.init(d_rng, jnp.zeros((1, FEATURES)))["params"]}}

    def _d_per_example(self, g_params, d_params, batch):
        fake = self.generator.apply({"params": g_params}, batch["noise"])
        real_logit = self.discriminator.apply({"params": d_params}, batch["inputs"])[:, 0]
        fake_logit = self.discriminator.apply({"params": d_params}, fake)[:, 0]
        return jax.nn.softplus(-real_logit) + jax.nn.softplus(fake_logit)  # (B,)

    def d_loss(self, g_params):
        def loss(d_params, batch, rng):
            per_example = self._d_per_example(g_params, d_params, batch)
            return jnp.sum(per_example), {"count": jnp.asarray(per_example.shape[0], jnp.float32)}
        return loss

    def g_loss(self, d_params):
        def loss(g_params, batch, rng):
            fake = self.generator.apply({"params": g_params}, batch["noise"])
            per_example = jax.nn.softplus(-self.discriminator.apply({"params": d_params}, fake)[:, 0])
            return jnp.sum(per_example), {"count": jnp.asarray(per_example.shape[0], jnp.float32)}
        return loss

    def update(self, state, batch, rng, tools):
        d_grads, d_sums = tools.mean_grads(self.d_loss(state.params["generator"]),
                                           state.params["discriminator"], batch, rng)
        state = tools.apply_gradients(state, d_grads, "discriminator")
        g_grads, g_sums = tools.mean_grads(self.g_loss(state.params["discriminator"]),
                                           state.params["generator"], batch, rng)
        state = tools.apply_gradients(state, g_grads, "generator")
        return state, {"count": d_sums["count"], "d_loss": d_sums["loss"], "g_loss": g_sums["loss"],
                       "d_grad_norm": optax.tree.norm(d_grads), "g_grad_norm": optax.tree.norm(g_grads)}

    def evaluate(self, variables, batch, rng):
        params = variables["params"]
        per_example = self._d_per_example(params["generator"], params["discriminator"], batch)
        return {"loss": jnp.sum(per_example * batch["mask"]), "count": jnp.sum(batch["mask"])}

    def summarize(self, sums):
        count = max(float(sums["count"]), 1.0)
        return {k: float(v) / count for k, v in sums.items() if k != "count"}


def toy_gan_config(**overrides) -> ml_collections.ConfigDict:
    c = configs.base_config()
    del c["optimizer"]
    c.optimizers = ml_collections.ConfigDict()
    c.optimizers.generator = dict(name="sgd", learning_rate=0.1)
    c.optimizers.discriminator = dict(name="adam", learning_rate=0.01)
    c.batch_size = 16
    c.eval_batch_size = 24
    c.num_train_steps = 8
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.update(overrides)
    return c


def toy_gan_run(workdir: str, **overrides) -> dict:
    config = toy_gan_config(**overrides)
    arrays = toy_gan_arrays()
    return train.train_and_evaluate(config, workdir, ToyGAN(), train.epoch_data(arrays, {"val": arrays}, config))


class BatchNormNet(nn.Module):
    """Dense -> BatchNorm -> relu -> Dense: a model with a `batch_stats` collection."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(32)(x.reshape((x.shape[0], -1)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(10)(nn.relu(x))


class BatchNormTask(ClassificationTask):
    """A classifier whose update also carries the model's new BatchNorm statistics."""

    def update(self, state, batch, rng, tools):
        def loss(params, batch, rng):
            logits, mutated = self.model.apply({"params": params, **state.extra}, batch["inputs"],
                                               train=True, mutable=["batch_stats"])
            sums = metrics.classification_sums(logits, batch["label"])
            return sums.pop("loss"), sums, dict(mutated)

        grads, sums, extra = tools.mean_grads(loss, state.params, batch, rng, with_state=True)
        state = tools.apply_gradients(state, grads).replace(extra=extra)
        return state, dict(sums, grad_norm=optax.tree.norm(grads))


class ShardedMLP(MLP):
    """lab's MLP (the same parameters, the same numbers; no dropout) with its first kernel declared
    split over the mesh's 'data' axis along its output features, at the parameter
    (`nn.with_partitioning`, a mesh axis name): FSDP-style parameter sharding, which that kernel's
    optimizer moments follow."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            kernel_init = nn.initializers.lecun_normal()
            if i == 0:
                kernel_init = nn.with_partitioning(kernel_init, (None, "data"))
            x = nn.relu(nn.Dense(width, kernel_init=kernel_init, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_classes, name="logits")(x)
