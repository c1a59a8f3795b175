"""The generative family as the loop sees it: a GAN and a VAE on images, with measured samples.

Sample quality is measured by a classifier run lab trained (a `FeatureNetwork` handed to the
task; `lab.generative_setup` loads it from the run named by `config.features_run`), since
Inception weights cannot be downloaded here:

* Frechet distance (FD, the FID recipe with lab's network): the Gaussian of the penultimate
  features of every test image against that of as many generated images, one per test example
  (each eval example carries its own fixed latent, `noise`), so an eval is the same 10,000 vs
  10,000 comparison at every step;
* mode coverage: the histogram of the network's predicted classes over the generated images and
  its entropy (log 10 = 2.303 nats when all ten classes are equally frequent).

Both come from sums (`lab.tasks.metrics.feature_moment_sums`, class counts) added over eval batches and
devices, so they are exact over padded batches and independent of the device count.

Image batches hold `inputs` (B, H, W, C) in [0, 1]; the GAN's also `noise` (B, Z) (the train
batches' from `lab.generative_setup.LatentBatcher`); the VAE's eval batches `posterior_noise` (B, Z), the
one-sample ELBO's reparameterisation noise.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import report
from lab.tasks import metrics
from lab.errors import ConfigValueError
from lab.models import gan, vae
from lab.task import Task

# Eval latent streams (`lab.generative_setup.fixed_latents`).
PRIOR_STREAM, POSTERIOR_STREAM = 0, 1
GRID_SIZE = 64  # the sample grid: the first 64 test examples' latents, the same at every eval
GRID_IMAGE_PX = 128  # each image of a grid is enlarged (nearest) to at least this many pixels a side
GRID_PAD = 2  # pixels between a grid's images


class FeatureNetwork:
    """A finished classifier run used as a fixed function: images -> (features, predicted class).

    Attributes:
      model: the run's flax module (an `image_classifier` from its config.json).
      params: its trained parameters (numpy).
      num_classes: number of classes it predicts.
      source: "WORKDIR/checkpoints/STEP" it came from.
    """

    def __init__(self, model: nn.Module, params: Any, num_classes: int, source: str):
        self.model, self.params, self.num_classes, self.source = model, params, num_classes, source

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images (B, H, W, C) in [0, 1] -> (features (B, F), predicted class ids (B,))."""
        logits, features = self.model.apply({"params": self.params}, images, return_features=True)
        return features, jnp.argmax(logits, axis=-1)


# The one-channel image datasets of the family, with their height (= width).
IMAGE_SIZES = {"fashion_mnist": 28, "mnist": 28, "digits": 8}


def check_image_dataset(dataset: str, num_halvings: int) -> None:
    """Raises ConfigValueError unless `dataset` is an image set whose size survives
    `num_halvings` stride-2 layers exactly (28 -> 14 -> 7: two at most; 8: three)."""
    if dataset not in IMAGE_SIZES:
        raise ConfigValueError(f"config.dataset={dataset!r} is not an image dataset: use one of "
                               f"{', '.join(IMAGE_SIZES)}")
    size = IMAGE_SIZES[dataset]
    if size % (2 ** num_halvings):
        most = max(k for k in range(6) if size % 2 ** k == 0)
        raise ConfigValueError(f"{dataset}'s {size}x{size} images do not halve {num_halvings} times: "
                               f"give the model's channels at most {most} entries")


def quality_sums(features: FeatureNetwork, real: jax.Array, fake: jax.Array, mask: jax.Array) -> dict:
    """Masked feature moments of real and generated images and the generated images' class counts."""
    real_f, _ = features(real)
    fake_f, fake_class = features(fake)
    real_sum, real_outer = metrics.feature_moment_sums(real_f, mask)
    fake_sum, fake_outer = metrics.feature_moment_sums(fake_f, mask)
    counts = jnp.sum(jax.nn.one_hot(fake_class, features.num_classes) * mask[:, None], axis=0)
    return {"real_feature_sum": real_sum, "real_feature_outer": real_outer,
            "fake_feature_sum": fake_sum, "fake_feature_outer": fake_outer, "fake_class_counts": counts}


def quality_summary(sums: dict) -> dict:
    """FD, class entropy, the class histogram (fractions) and its largest share, from `quality_sums`."""
    n = float(sums["count"])
    real = metrics.gaussian_from_sums(sums["real_feature_sum"], sums["real_feature_outer"], n)
    fake = metrics.gaussian_from_sums(sums["fake_feature_sum"], sums["fake_feature_outer"], n)
    counts = np.asarray(sums["fake_class_counts"], np.float64)
    histogram = counts / max(counts.sum(), 1.0)
    return {"fd": metrics.frechet_distance(*fake, *real), "class_entropy": metrics.class_entropy(counts),
            "max_class_fraction": float(histogram.max()), "class_histogram": histogram}


def _per_example(sums: dict) -> dict:
    """Every scalar sum but `count`, divided by it."""
    count = max(float(sums["count"]), 1.0)
    return {k: float(v) / count for k, v in sums.items() if k != "count" and np.ndim(v) == 0}


def _has_quality(sums: dict) -> bool:
    return "fake_class_counts" in sums


def _save_grid(workdir: str, name: str, step: int, images: np.ndarray, cols: int,
               keys: tuple[str, ...] = (), row_labels: tuple[str, ...] = ()) -> None:
    """Tiles `images` (N, H, W, C) in [0, 1], `cols` a row, each enlarged to at least
    GRID_IMAGE_PX a side, into `workdir/NAME.png` (the latest; TensorBoard's image NAME at the
    eval's step) and `workdir/samples/NAME_STEP.png` (the history), captioned with the run, the
    step, the eval metrics `keys` and NAME; `row_labels` name the grid's rows."""
    images = np.asarray(images)
    grid = report.image_grid(images, cols=cols, pad=GRID_PAD, upscale=grid_upscale(images.shape[1]))
    caption = f"{report.caption(workdir, step, keys)} | {name}"
    report.save_image(os.path.join(workdir, "samples", f"{name}_{step:07d}.png"), grid, caption, row_labels)
    report.save_image(os.path.join(workdir, f"{name}.png"), grid, caption, row_labels, tag=name)


def grid_upscale(height: int) -> int:
    """The nearest-neighbour enlargement of images `height` pixels high in a grid: at least 4,
    and enough for GRID_IMAGE_PX (8 -> 16, 28 -> 5)."""
    return max(4, -(-GRID_IMAGE_PX // int(height)))


class GANTask(Task):
    """A generator and a discriminator, two parameter sets (`params['generator']`,
    `params['discriminator']`) stepped by two named optimizers (`config.optimizers.<name>`).

    One step: the discriminator's gradient on real vs generated images (the generator fixed),
    its optimizer step, then the generator's non-saturating gradient through the *updated*
    discriminator, its optimizer step. Both see the batch's `noise`.

    Args:
      generator, discriminator: `lab.models.gan` modules.
      latent_dim: size of z.
      image_shape: (H, W, C).
      features: the feature network of the sample-quality metrics (None: no FD / coverage).
      grid_noise: (64, Z) latents of the sample grid drawn at every eval.
    """

    curves = ("d_loss", "g_loss", "fd", "class_entropy")

    def __init__(self, generator: gan.Generator, discriminator: gan.Discriminator, latent_dim: int,
                 image_shape, features: FeatureNetwork | None, grid_noise: np.ndarray):
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.image_shape = latent_dim, tuple(image_shape)
        self.features, self.grid_noise = features, grid_noise

    def init(self, rng: jax.Array) -> dict:
        """`{'params': {'generator': ..., 'discriminator': ...}}`, each from its own key."""
        g_rng, d_rng = jax.random.split(rng)
        z = jnp.zeros((1, self.latent_dim))
        x = jnp.zeros((1, *self.image_shape))
        return {"params": {"generator": self.generator.init(g_rng, z)["params"],
                           "discriminator": self.discriminator.init(d_rng, x)["params"]}}

    def _fake(self, g_params, noise):
        return self.generator.apply({"params": g_params}, noise)

    def _logits(self, d_params, images):
        return self.discriminator.apply({"params": d_params}, images)

    def d_loss(self, g_params):
        """The discriminator's loss `(d_params, batch, rng) -> (sum, sums)` against a fixed generator."""
        def loss(d_params, batch, rng):
            fake = jax.lax.stop_gradient(self._fake(g_params, batch["noise"]))
            real_logits = self._logits(d_params, gan.from_unit(batch["inputs"]))
            fake_logits = self._logits(d_params, fake)
            per_example = gan.discriminator_loss(real_logits, fake_logits)
            return jnp.sum(per_example), {
                "count": jnp.asarray(per_example.shape[0], jnp.float32),
                "d_real": jnp.sum(jax.nn.sigmoid(real_logits)), "d_fake": jnp.sum(jax.nn.sigmoid(fake_logits))}
        return loss

    def g_loss(self, d_params):
        """The generator's loss `(g_params, batch, rng) -> (sum, sums)` against a fixed discriminator."""
        def loss(g_params, batch, rng):
            per_example = gan.generator_loss(self._logits(d_params, self._fake(g_params, batch["noise"])))
            return jnp.sum(per_example), {"count": jnp.asarray(per_example.shape[0], jnp.float32)}
        return loss

    def update(self, state, batch, rng, tools):
        """The discriminator's step, then the generator's (see the class docstring); sums of both
        losses, the discriminator's mean outputs on real and generated images, the grad norms."""
        d_rng, g_rng = jax.random.split(rng)  # each step its own key (the losses draw none today)
        d_grads, d_sums = tools.mean_grads(self.d_loss(state.params["generator"]),
                                           state.params["discriminator"], batch, d_rng)
        state = tools.apply_gradients(state, d_grads, "discriminator")
        g_grads, g_sums = tools.mean_grads(self.g_loss(state.params["discriminator"]),
                                           state.params["generator"], batch, g_rng)
        state = tools.apply_gradients(state, g_grads, "generator")
        return state, {"count": d_sums["count"], "d_loss": d_sums["loss"], "g_loss": g_sums["loss"],
                       "d_real": d_sums["d_real"], "d_fake": d_sums["d_fake"],
                       "d_grad_norm": optax.tree.norm(d_grads), "g_grad_norm": optax.tree.norm(g_grads)}

    def evaluate(self, variables, batch, rng):
        """Test images against one generated image per test example (its `noise`): both losses,
        and the sample-quality sums."""
        params, mask = variables["params"], batch["mask"]
        fake = self._fake(params["generator"], batch["noise"])
        real_logits = self._logits(params["discriminator"], gan.from_unit(batch["inputs"]))
        fake_logits = self._logits(params["discriminator"], fake)
        sums = {"count": jnp.sum(mask),
                "d_loss": jnp.sum(gan.discriminator_loss(real_logits, fake_logits) * mask),
                "g_loss": jnp.sum(gan.generator_loss(fake_logits) * mask),
                "d_real": jnp.sum(jax.nn.sigmoid(real_logits) * mask),
                "d_fake": jnp.sum(jax.nn.sigmoid(fake_logits) * mask)}
        if self.features is not None:
            sums.update(quality_sums(self.features, batch["inputs"], gan.to_unit(fake), mask))
        return sums

    def summarize(self, sums: dict) -> dict:
        """Per-example d_loss, g_loss, mean D(real) and D(generated); at eval FD and coverage."""
        out = _per_example(sums)
        if _has_quality(sums):
            out.update(quality_summary(sums))
        return out

    def on_eval(self, variables, step: int, workdir: str, rng: jax.Array) -> None:
        """`samples.png`: the generator's images of the same 64 latents at every eval."""
        images = gan.to_unit(self._fake(variables["params"]["generator"], jnp.asarray(self.grid_noise)))
        _save_grid(workdir, "samples", step, np.asarray(images), cols=8, keys=("fd", "class_entropy"))


class VAETask(Task):
    """A VAE trained on the negative ELBO (one reparameterised sample per image per step, its
    noise drawn from the step's rng), evaluated on the test ELBO in nats per image with its two
    parts, and on the sample quality of decoded prior samples.

    Args:
      model: a `lab.models.vae.VAE`.
      features: the feature network (None: no FD / coverage).
      grid_noise: (64, Z) prior latents of the sample grid.
      shown_images: (16, H, W, C) test images for the reconstruction grid and the interpolation.
    """

    curves = ("elbo", "kl", "fd", "class_entropy")

    def __init__(self, model: vae.VAE, features: FeatureNetwork | None, grid_noise: np.ndarray,
                 shown_images: np.ndarray):
        self.model, self.features = model, features
        self.grid_noise, self.shown_images = grid_noise, shown_images

    def init(self, rng: jax.Array) -> dict:
        """The VAE's `{'params': ...}` from `rng`."""
        x = jnp.zeros((1, *self.model.image_shape))
        return {"params": self.model.init(rng, x, jnp.zeros((1, self.model.latent_dim)))["params"]}

    def _terms(self, params, images, eps):
        return vae.elbo_terms(self.model, params, images, eps)

    def loss(self, params, batch, rng):
        """(sum of -ELBO over the batch, sums of its reconstruction and KL parts); one
        reparameterisation sample per image, eps ~ N(0, I) (B, Z) drawn from `rng`."""
        eps = jax.random.normal(rng, (batch["inputs"].shape[0], self.model.latent_dim))
        recon, kl = self._terms(params, batch["inputs"], eps)
        return jnp.sum(recon + kl), {"count": jnp.asarray(recon.shape[0], jnp.float32),
                                     "recon": jnp.sum(recon), "kl": jnp.sum(kl)}

    def evaluate(self, variables, batch, rng):
        """Masked sums of -ELBO (`loss`), its reconstruction and KL parts, and sample quality."""
        params, mask = variables["params"], batch["mask"]
        recon, kl = self._terms(params, batch["inputs"], batch["posterior_noise"])
        sums = {"count": jnp.sum(mask), "loss": jnp.sum((recon + kl) * mask),
                "recon": jnp.sum(recon * mask), "kl": jnp.sum(kl * mask)}
        if self.features is not None:
            fake = self.model.apply({"params": params}, batch["noise"], method=vae.VAE.decode_mean)
            sums.update(quality_sums(self.features, batch["inputs"], fake, mask))
        return sums

    def summarize(self, sums: dict) -> dict:
        """Per image: `loss` (-ELBO, nats), `elbo`, `recon`, `kl`; at eval FD and coverage."""
        out = _per_example(sums)
        out["elbo"] = -out["loss"]
        if _has_quality(sums):
            out.update(quality_summary(sums))
        return out

    def on_eval(self, variables, step: int, workdir: str, rng: jax.Array) -> None:
        """`samples.png` (decoded prior latents, the same at every eval), `reconstructions.png`
        (test images, each above its reconstruction from the posterior mean, rows labelled) and
        `interpolation.png` (decoded points on the line between the posterior means of pairs of
        test images, one pair per row)."""
        params = variables["params"]
        apply = lambda *a, **k: self.model.apply({"params": params}, *a, **k)
        samples = apply(jnp.asarray(self.grid_noise), method=vae.VAE.decode_mean)
        _save_grid(workdir, "samples", step, np.asarray(samples), cols=8, keys=("fd", "class_entropy"))
        shown = jnp.asarray(self.shown_images)
        mean, _ = apply(shown, method=vae.VAE.encode)
        recon = apply(mean, method=vae.VAE.decode_mean)
        pairs = np.concatenate([np.asarray(shown[:8]), np.asarray(recon[:8]),
                                np.asarray(shown[8:16]), np.asarray(recon[8:16])])
        _save_grid(workdir, "reconstructions", step, pairs, cols=8, keys=("elbo",),
                   row_labels=("input", "reconstruction") * 2)
        t = jnp.linspace(0.0, 1.0, 10)[None, :, None]
        ends = mean[:8].reshape(4, 2, -1)
        path = ends[:, :1] * (1 - t) + ends[:, 1:] * t  # (4 pairs, 10 points, Z)
        strip = apply(path.reshape(40, -1), method=vae.VAE.decode_mean)
        _save_grid(workdir, "interpolation", step, np.asarray(strip), cols=10, keys=("elbo",))
