"""Configs of the DCGAN. Select a variant with `--config=experiments/gan/config.py:NAME`.

First train the feature network the sample-quality metrics read (`features_run`):

  python -m experiments.mlp_classifier --workdir=runs/cnn_fashion --config=experiments/mlp_classifier/config.py:cnn_fashion

  (default)  python -m experiments.gan --workdir=runs/gan_fashion
             DCGAN on Fashion-MNIST: Adam(2e-4, b1=0.5) for each network, batch 64, 9,000 steps.
             Measured on the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512, matmul peak ~136-153
             GFLOP/s), alone: 788 s wall; test FD 33.3 (10,000 samples vs the 10,000 test images;
             the VAE: 83.6; train vs test images: 0.15-0.17), class entropy 2.239 (log 10 = 2.303).
  digits     python -m experiments.gan --workdir=runs/gan_digits --config=experiments/gan/config.py:digits
             8x8 digits (features_run runs/cnn_digits, built by the mlp_classifier's cnn_digits).
             42 s wall; test FD 11.96 (the VAE's: 22.1), class entropy 2.267.
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The DCGAN recipe on Fashion-MNIST, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random number of the run (init, data order, latent noise) derives from it
    c.dataset = "fashion_mnist"  # fashion_mnist | digits | mnist (28x28 or 8x8 one-channel images)
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.features_run = "runs/cnn_fashion"  # workdir of the classifier run whose features measure the samples
    c.batch_size = 64  # global batch of real images (and as many generated), split over all devices
    c.eval_batch_size = 1000  # eval: every test image against one generated image per test example
    c.num_train_steps = 9000  # 9.6 epochs of 937 batches
    c.log_every_steps = 500
    c.eval_every_steps = 1000  # FD and class coverage of 10,000 samples at each eval
    c.checkpoint_every_steps = 1000
    c.max_checkpoints_to_keep = 2
    c.parallel = "jit"  # 'jit' or 'pmap': the same numbers (the noise travels with the batch)
    c.steps_per_call = 1  # train steps per compiled call (one lax.scan); the same numbers as 1
    c.mesh = ""  # e.g. "data:2,fsdp:2": parameters split along fsdp (lab.parallel.parse_mesh); "": all on data

    c.model = ml_collections.ConfigDict()
    c.model.latent_dim = 64  # size of z ~ N(0, I)
    c.model.generator_channels = (64, 32)  # widths from 7x7 up (each ConvTranspose doubles the size)
    c.model.discriminator_channels = (32, 64)  # widths of the strided 4x4 convolutions

    # Two parameter sets, two optimizers: params['generator'] and params['discriminator'].
    c.optimizers = ml_collections.ConfigDict()
    for name in ("generator", "discriminator"):
        c.optimizers[name] = ml_collections.ConfigDict(dict(name="adam", learning_rate=2e-4, b1=0.5, b2=0.999))

    c.reference = ml_collections.ConfigDict(dict(
        metric="test_fd", value=33.33, source="this config's own published run (BUILD_NOTES.md; lower is better)"))

    if variant in (None, "", "fashion"):
        return c
    if variant == "digits":
        c.dataset = "digits"
        c.features_run = "runs/cnn_digits"
        c.eval_batch_size = 360  # the whole test split in one batch
        c.num_train_steps = 3000  # 134 epochs of 22 batches
        c.log_every_steps = 250
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 1000
        c.model.latent_dim = 32
        c.model.generator_channels = (64, 32)  # 2x2 -> 4x4 -> 8x8
        c.model.discriminator_channels = (32, 64)
        c.reference.value = 11.96
        return c
    raise ValueError(f"unknown variant {variant!r}: use fashion (the default) or digits")
