"""Configs of the DCGAN. Select a variant with `--config=experiments/gan/config.py:NAME`.

What they are for: a GAN trained by lab's loop with two optimizers, its samples scored by FD and
class coverage through a feature network, the classifier run named by `features_run`. Train that
one first, beside this run's workdir (a run named in a config file is looked for in the folder
that holds the workdir; one given as --config.features_run=PATH is relative to the current folder):

  python -m experiments.mlp_classifier --workdir=runs/cnn_fashion --config=experiments/mlp_classifier/config.py:cnn_fashion

The measured numbers live in experiments/reference_results.json (README's results table is
generated from it); each variant names its row, and the closing summary quotes that row.

  (default)  python -m experiments.gan --workdir=runs/gan_fashion
             DCGAN on Fashion-MNIST: Adam(2e-4, b1=0.5) for each network, batch 64, 9,000 steps;
             test FD and class entropy of 10,000 samples against the 10,000 test images, drawn
             from a moving average of the weights (decay 0.999: a steadier generator than the
             last step's, so seeds agree more closely).
             Row: gan_fashion.
  digits     python -m experiments.gan --workdir=runs/gan_digits --config=experiments/gan/config.py:digits
             The same on the 8x8 digits: the quick check of the generative family. Its
             features_run is cnn_digits beside the workdir (runs/cnn_digits here), built by the
             mlp_classifier's cnn_digits variant. Row: gan_digits.
"""

import ml_collections

from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The DCGAN recipe on Fashion-MNIST, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random number of the run (init, data order, latent noise) derives from it
    c.dataset = "fashion_mnist"  # fashion_mnist | digits | mnist (28x28 or 8x8 one-channel images)
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.features_run = "cnn_fashion"  # the classifier run whose features measure the samples; here: beside the workdir
    c.batch_size = 64  # global batch of real images (and as many generated), split over all devices
    c.eval_batch_size = 1000  # eval: every test image against one generated image per test example
    c.num_train_steps = 9000  # 9.6 epochs of 937 batches
    c.log_every_steps = 500
    c.eval_every_steps = 1000  # FD and class coverage of 10,000 samples at each eval
    c.checkpoint_every_steps = 1000
    c.max_checkpoints_to_keep = 2
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)
    c.ema_decay = 0.999  # samples, FD and coverage from the weights' moving average, as GAN practice samples (0: the last step's)

    c.model = ml_collections.ConfigDict()
    c.model.latent_dim = 64  # size of z ~ N(0, I)
    c.model.generator_channels = (64, 32)  # widths from 7x7 up (each ConvTranspose doubles the size)
    c.model.discriminator_channels = (32, 64)  # widths of the strided 4x4 convolutions

    # Two parameter sets, two optimizers: params['generator'] and params['discriminator'].
    c.optimizers = ml_collections.ConfigDict()
    for name in ("generator", "discriminator"):
        c.optimizers[name] = ml_collections.ConfigDict(dict(name="adam", learning_rate=2e-4, b1=0.5, b2=0.999))

    # Shown beside the result in the closing summary (FD: lower is better); no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "gan_fashion", "test_fd")

    if variant in (None, "", "fashion"):
        return c
    if variant == "digits":
        c.dataset = "digits"
        c.features_run = "cnn_digits"
        c.eval_batch_size = 360  # the whole test split in one batch
        c.num_train_steps = 3000  # 134 epochs of 22 batches
        c.log_every_steps = 250
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 1000
        c.model.latent_dim = 32
        c.model.generator_channels = (64, 32)  # 2x2 -> 4x4 -> 8x8
        c.model.discriminator_channels = (32, 64)
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "gan_digits", "test_fd")
        return c
    raise ValueError(f"unknown variant {variant!r}: use fashion (the default) or digits")
